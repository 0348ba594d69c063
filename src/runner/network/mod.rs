//! The sandbox's network, with docker run's meanings: `bridge` (the default) is a network
//! namespace of its own with an interface, an address, a default route and DNS, reaching out
//! through the host — made by pasta (passt), a user-mode network stack that needs no privilege,
//! so root and other users get the same network ([`pasta`]); `none` is a namespace with only
//! loopback; `host` is the host's. Published ports (`-p`), `--dns` and `--add-host` (with
//! docker's `host-gateway`) are decided here, as plain data, with what the sandbox's
//! /etc/hosts and /etc/resolv.conf say ([`Network::etc_hosts`], [`Network::resolv_conf`]).
//!
//! A bridge sandbox's addresses are fixed, as slirp4netns's are: it is [`ADDRESS`] on a /24
//! whose gateway, [`GATEWAY`], is the host; [`DNS_FORWARD`] forwards DNS to the host's first
//! resolver. The gateway reaches the host's own loopback services only when asked for, by
//! `--add-host NAME:host-gateway` or `--dns` at the gateway: otherwise a sandbox reaches what
//! the host reaches, but not what listens on the host's loopback (save DNS, forwarded).

pub(crate) mod pasta;

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// The sandbox's address on its bridge network.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// The prefix length of the sandbox's network.
pub const PREFIX: u8 = 24;
/// The gateway: the host, as the sandbox sees it (docker's `host-gateway`).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Where DNS queries reach the host's first resolver (pasta's `--dns-forward`).
pub const DNS_FORWARD: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

/// A bridge network whose pasta was started as `imgfs run` began ([`start_early`]).
pub struct Early(pub(crate) pasta::Helper);

/// Starts the bridge network's pasta now, on namespaces made for the sandbox at once, so that
/// it comes up while the image is resolved rather than after: call it while the process is
/// single-threaded, before anything else of `imgfs run`. The supervisor then joins those
/// namespaces. None when the network is not a bridge, or cannot be started so (the sandbox
/// then starts it itself, and says why it cannot).
pub fn start_early(mode: Mode, flags: &NetworkFlags) -> Option<Early> {
    if mode != Mode::Bridge || !crate::sys::single_threaded() {
        return None;
    }
    let net = Network::build(mode, flags).ok()?;
    let unprivileged = crate::sys::effective_ids().0 != 0;
    pasta::Helper::early(&net, unprivileged)
        .map(Early)
        .map_err(|e| log::debug!("the network starts later: {e}"))
        .ok()
}

/// docker's lines of /etc/hosts in a container of its own network.
const HOSTS_HEAD: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n";

/// `--network`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    #[default]
    Bridge,
    None,
    Host,
}

/// A port published on the host (`-p [IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub udp: bool,
}

/// The sandbox's network, decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub mode: Mode,
    pub publish: Vec<Publish>,
    pub dns: Vec<IpAddr>,
    /// `--add-host` entries, `host-gateway` resolved.
    pub extra_hosts: Vec<(String, IpAddr)>,
    /// Whether the gateway reaches the host's loopback.
    pub map_gateway: bool,
}

/// The network flags as the user typed them.
#[derive(Clone, Debug, Default)]
pub struct NetworkFlags {
    pub publish: Vec<String>,
    pub dns: Vec<String>,
    pub add_host: Vec<String>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NetworkError {
    #[error("bad --publish '{spec}': {why}")]
    Publish { spec: String, why: &'static str },
    #[error("--publish needs --network bridge: with '{0}' there is nothing to publish")]
    PublishWithout(&'static str),
    #[error("bad --dns '{0}': not an IP address")]
    Dns(String),
    #[error("bad --add-host '{spec}': {why}")]
    AddHost { spec: String, why: &'static str },
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Bridge => "bridge",
            Mode::None => "none",
            Mode::Host => "host",
        }
    }
}

impl Network {
    /// Reads the flags, as docker run does.
    pub fn build(mode: Mode, flags: &NetworkFlags) -> Result<Network, NetworkError> {
        let publish: Vec<Publish> = flags
            .publish
            .iter()
            .map(|p| parse_publish(p))
            .collect::<Result<_, _>>()?;
        if !publish.is_empty() && mode != Mode::Bridge {
            return Err(NetworkError::PublishWithout(mode.name()));
        }
        let dns: Vec<IpAddr> = flags
            .dns
            .iter()
            .map(|d| d.parse().map_err(|_| NetworkError::Dns(d.clone())))
            .collect::<Result<_, _>>()?;
        let extra_hosts: Vec<(String, IpAddr)> = flags
            .add_host
            .iter()
            .map(|h| parse_add_host(h))
            .collect::<Result<_, _>>()?;
        // `host-gateway` (in either of docker's spellings) is the gateway's address by now.
        let gateway = IpAddr::V4(GATEWAY);
        let map_gateway =
            extra_hosts.iter().any(|(_, ip)| *ip == gateway) || dns.contains(&gateway);
        Ok(Network {
            mode,
            publish,
            dns,
            extra_hosts,
            map_gateway,
        })
    }

    /// The sandbox's /etc/hosts: as docker writes it (the host's with `host`), then the
    /// `--add-host` entries, then, on a bridge, the sandbox's own address and name.
    pub(crate) fn etc_hosts(&self, hostname: &str, host_hosts: &str) -> String {
        let mut out = match self.mode {
            Mode::Host => {
                let mut h = host_hosts.to_string();
                if !h.is_empty() && !h.ends_with('\n') {
                    h.push('\n');
                }
                h
            }
            _ => HOSTS_HEAD.to_string(),
        };
        for (name, ip) in &self.extra_hosts {
            out.push_str(&format!("{ip}\t{name}\n"));
        }
        if self.mode == Mode::Bridge {
            out.push_str(&format!("{ADDRESS}\t{hostname}\n"));
        }
        out
    }

    /// The sandbox's /etc/resolv.conf: `--dns` servers with the host's search and options
    /// lines, as docker writes it; else the host's own (with `host`), or the host's without
    /// nameservers on its loopback, which the sandbox cannot reach — and when none is left,
    /// [`DNS_FORWARD`], which forwards to the host's first resolver.
    pub(crate) fn resolv_conf(&self, host_resolv: &str) -> String {
        if self.mode == Mode::Host && self.dns.is_empty() {
            return host_resolv.to_string();
        }
        let mut servers: Vec<String> = Vec::new();
        let mut rest = String::new();
        for line in host_resolv.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let usable = words
                        .next()
                        .and_then(|a| a.parse::<IpAddr>().ok())
                        .is_some_and(|a| !a.is_loopback());
                    if usable {
                        servers.push(line.trim().to_string());
                    }
                }
                Some("search" | "domain" | "options") => {
                    rest.push_str(line.trim());
                    rest.push('\n');
                }
                _ => {}
            }
        }
        if !self.dns.is_empty() {
            servers = self.dns.iter().map(|d| format!("nameserver {d}")).collect();
        } else if servers.is_empty() {
            servers.push(format!("nameserver {DNS_FORWARD}"));
        }
        let mut out = String::new();
        for s in servers {
            out.push_str(&s);
            out.push('\n');
        }
        out + &rest
    }
}

/// `[IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`, an IPv6 address in brackets.
fn parse_publish(spec: &str) -> Result<Publish, NetworkError> {
    let bad = |why| NetworkError::Publish {
        spec: spec.to_string(),
        why,
    };
    let (ports, udp) = match spec.rsplit_once('/') {
        Some((p, "tcp")) => (p, false),
        Some((p, "udp")) => (p, true),
        Some(_) => return Err(bad("the protocol is tcp or udp")),
        None => (spec, false),
    };
    let (rest, container) = ports
        .rsplit_once(':')
        .ok_or_else(|| bad("give HOST_PORT:CONTAINER_PORT"))?;
    let (host_ip, host) = match rest.rsplit_once(':') {
        Some((ip, port)) => {
            let ip = ip
                .strip_prefix('[')
                .and_then(|i| i.strip_suffix(']'))
                .unwrap_or(ip);
            let ip: IpAddr = ip.parse().map_err(|_| bad("not an IP address"))?;
            (Some(ip), port)
        }
        None => (None, rest),
    };
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| bad("a port is a number from 1 to 65535"))
    };
    Ok(Publish {
        host_ip,
        host_port: port(host)?,
        container_port: port(container)?,
        udp,
    })
}

/// `NAME:IP`, `NAME:host-gateway` (the gateway), or docker's newer `NAME=IP`.
fn parse_add_host(spec: &str) -> Result<(String, IpAddr), NetworkError> {
    let bad = |why| NetworkError::AddHost {
        spec: spec.to_string(),
        why,
    };
    let (name, ip) = spec
        .split_once('=')
        .or_else(|| spec.split_once(':'))
        .ok_or_else(|| bad("give NAME:IP"))?;
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if !valid {
        return Err(bad("a host name is letters, digits, '-', '.' and '_'"));
    }
    let ip = match ip {
        "host-gateway" => IpAddr::V4(GATEWAY),
        ip => {
            let ip = ip
                .strip_prefix('[')
                .and_then(|i| i.strip_suffix(']'))
                .unwrap_or(ip);
            ip.parse().map_err(|_| bad("not an IP address"))?
        }
    };
    Ok((name.to_string(), ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(publish: &[&str], dns: &[&str], add_host: &[&str]) -> NetworkFlags {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        NetworkFlags {
            publish: v(publish),
            dns: v(dns),
            add_host: v(add_host),
        }
    }

    #[test]
    fn publish_specs_read_as_docker_reads_them() {
        let p = |s| parse_publish(s);
        assert_eq!(
            p("8080:80").unwrap(),
            Publish {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                udp: false
            }
        );
        let q = p("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(
            (q.host_ip, q.udp),
            (Some("127.0.0.1".parse().unwrap()), true)
        );
        assert_eq!(
            p("[::1]:1:2/tcp").unwrap().host_ip,
            Some("::1".parse().unwrap())
        );
        for bad in ["80", "0:80", "8080:70000", "a:1:2", "1:2/sctp", ":80"] {
            assert!(p(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn hosts_and_resolv_are_docker_s() {
        let f = flags(&[], &["10.0.2.2"], &["gw:host-gateway", "foo:10.1.2.3"]);
        let none = Network::build(Mode::None, &f).unwrap();
        assert!(none.map_gateway);
        let equals = Network::build(Mode::Bridge, &flags(&[], &[], &["gw=host-gateway"])).unwrap();
        assert!(equals.map_gateway);
        // What docker run --network none writes for the same flags (docker 20.10), but for
        // host-gateway's address, which is the gateway of imgfs's network.
        assert_eq!(
            none.etc_hosts("box", ""),
            format!("{HOSTS_HEAD}10.0.2.2\tgw\n10.1.2.3\tfoo\n")
        );
        let host = "nameserver 127.0.0.53\nnameserver 192.0.2.9\nsearch example\noptions ndots:2\n";
        assert_eq!(
            none.resolv_conf(host),
            "nameserver 10.0.2.2\nsearch example\noptions ndots:2\n"
        );
        let bridge = Network::build(Mode::Bridge, &flags(&[], &[], &[])).unwrap();
        assert!(!bridge.map_gateway);
        assert!(bridge.etc_hosts("box", "").ends_with("\n10.0.2.100\tbox\n"));
        assert_eq!(
            bridge.resolv_conf(host),
            "nameserver 192.0.2.9\nsearch example\noptions ndots:2\n"
        );
        assert_eq!(
            bridge.resolv_conf("nameserver 127.0.0.53\n"),
            "nameserver 10.0.2.3\n"
        );
        let host_net = Network::build(Mode::Host, &flags(&[], &[], &["a:1.2.3.4"])).unwrap();
        assert_eq!(
            host_net.etc_hosts("box", "1.1.1.1 x"),
            "1.1.1.1 x\n1.2.3.4\ta\n"
        );
        assert_eq!(host_net.resolv_conf(host), host);
    }

    #[test]
    fn bad_flags_are_refused_with_a_reason() {
        assert_eq!(
            Network::build(Mode::None, &flags(&["1:2"], &[], &[])),
            Err(NetworkError::PublishWithout("none"))
        );
        assert!(Network::build(Mode::Bridge, &flags(&[], &["x"], &[])).is_err());
        for bad in ["nohost", "a b:1.2.3.4", "a:999.1.1.1", ":1.2.3.4"] {
            assert!(
                Network::build(Mode::Bridge, &flags(&[], &[], &[bad])).is_err(),
                "{bad} was accepted"
            );
        }
    }
}
