//! The sandbox's network: `--network bridge` (the default) reaching the host's loopback
//! services through the gateway when asked, resolving through `--dns`, publishing ports with
//! `-p`; `--network none` with loopback only; the same for a user without root; no helper left
//! after `kill -9`; and /etc/hosts, /etc/resolv.conf and /etc/hostname as docker run writes
//! them. Only services on this machine's loopback are ever reached.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use super::isolation::{run_as, user_cache};
use super::*;

/// The address of the host as a sandbox sees it (imgfs's bridge network).
const GATEWAY: &str = "10.0.2.2";
/// What the test's resolver answers for every name.
const RESOLVED: [u8; 4] = [192, 0, 2, 77];

/// An HTTP server on the host's 127.0.0.1 answering every request with `body`; its port.
fn http_server(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// A DNS server on the host's 127.0.0.1:53 answering every query with one A record,
/// [`RESOLVED`], for as long as the returned socket lives.
fn dns_server() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:53")
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:53 for the test's resolver: {e}"));
    let serving = socket.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut q = [0u8; 512];
        while let Ok((n, from)) = serving.recv_from(&mut q) {
            // The question: its name's labels, then type and class.
            let mut end = 12;
            while end < n && q[end] != 0 {
                end += 1 + q[end] as usize;
            }
            end += 5;
            if end > n {
                continue;
            }
            let mut a = Vec::with_capacity(end + 16);
            a.extend_from_slice(&q[..2]); // the id
            a.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
            a.extend_from_slice(&q[12..end]);
            a.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            a.extend_from_slice(&RESOLVED);
            let _ = serving.send_to(&a, from);
        }
    });
    socket
}

/// A Python program that fetches a page from the host through `hostbox`, resolves a name,
/// and lists the network interfaces, one line each.
fn reach_script(port: u16) -> String {
    format!(
        "import os, socket, urllib.request\n\
         print(urllib.request.urlopen('http://hostbox:{port}/', timeout=10).read().decode())\n\
         print(socket.gethostbyname('service.imgfs.test'))\n\
         print(' '.join(sorted(os.listdir('/sys/class/net'))))\n"
    )
}

/// The flags that let a sandbox reach the host's loopback: a name for the gateway, and the
/// gateway as its resolver.
const REACH: [&str; 4] = ["--add-host", "hostbox:host-gateway", "--dns", GATEWAY];

/// The same program and flags in a sandbox of `network`, as root and as a user without root.
fn reach(network: &str, port: u16) -> [Output; 2] {
    let script = reach_script(port);
    let mut opts = vec!["--network", network];
    opts.extend(REACH);
    let user = common::test_user();
    let cache = user_cache(user, "imgfs-net-user");
    [
        run_in(DEBIAN_IMAGE, &opts, &["python3", "-c", &script]),
        output(run_as(user, cache.path(), &opts).args(["python3", "-c", &script])),
    ]
}

/// The default network reaches a web server and a resolver on the host's loopback through
/// the gateway, and has an interface besides `lo`; `--network none` reaches neither and has
/// only `lo`. As root and as a user without root.
#[test]
fn bridge_reaches_the_host_through_its_gateway_and_none_does_not() {
    let _docker = require_images();
    let _dns = lock::exclusive("dns-port-53");
    let _resolver = dns_server();
    let port = http_server("hello from the host");
    let want = format!(
        "hello from the host\n{}\neth0 lo\n",
        std::net::Ipv4Addr::from(RESOLVED)
    );
    for (who, out) in ["root", "user"].into_iter().zip(reach("bridge", port)) {
        assert_eq!(assert_ok(&out), want, "{who}: {}", text(&out.stderr));
    }
    for (who, out) in ["root", "user"].into_iter().zip(reach("none", port)) {
        assert!(
            !out.status.success(),
            "{who}: the fetch worked without a network"
        );
        assert!(
            text(&out.stderr).contains("unreachable"),
            "{who}: {}",
            text(&out.stderr)
        );
    }
    let lo = run_in(
        DEBIAN_IMAGE,
        &["--network", "none"],
        &["ls", "/sys/class/net"],
    );
    assert_eq!(assert_ok(&lo), "lo\n");
}

/// A free UDP port on 127.0.0.1 now.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A server inside the sandbox, on TCP 8000 and a UDP port, published on the host's 127.0.0.1
/// with `-p`: reached from the host over both, as root and as a user without root. The UDP
/// port keeps its number: Debian 12's pasta does not carry replies back to a client on the
/// host's loopback when a published UDP port changes number (README says so).
#[test]
fn published_ports_reach_a_server_inside() {
    let _docker = require_images();
    let server = "import socket, sys\n\
        t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        t.bind(('0.0.0.0', 8000)); t.listen()\n\
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', int(sys.argv[1])))\n\
        print('ready', flush=True)\n\
        c, _ = t.accept(); c.sendall(b'tcp inside'); c.close()\n\
        d, a = u.recvfrom(100); u.sendto(b'udp ' + d, a)\n";
    let user = common::test_user();
    let cache = user_cache(user, "imgfs-net-user");
    for who in ["root", "user"] {
        let (tcp, udp) = (common::free_port(), free_udp_port());
        let publish = [
            "-p".to_string(),
            format!("127.0.0.1:{tcp}:8000"),
            "-p".to_string(),
            format!("127.0.0.1:{udp}:{udp}/udp"),
        ];
        let publish: Vec<&str> = publish.iter().map(String::as_str).collect();
        let mut cmd = if who == "root" {
            let mut c = imgfs();
            c.arg("run")
                .arg("--cache-dir")
                .arg(shared_cache())
                .args(&publish)
                .arg(DEBIAN_IMAGE)
                .arg("--");
            c
        } else {
            run_as(user, cache.path(), &publish)
        };
        let mut child = cmd
            .args(["python3", "-c", server, &udp.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().map(Result::unwrap_or_default);
        if first.as_deref() != Some("ready") {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{who}: the server did not start: {}", text(&out.stderr));
        }
        let mut got = String::new();
        let mut conn = TcpStream::connect(("127.0.0.1", tcp)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.read_to_string(&mut got).unwrap();
        assert_eq!(got, "tcp inside", "{who}");
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let start = Instant::now();
        let reply = loop {
            socket.send_to(b"ping", ("127.0.0.1", udp)).unwrap();
            let mut buf = [0u8; 100];
            if let Ok(n) = socket.recv(&mut buf) {
                break buf[..n].to_vec();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{who}: no UDP reply"
            );
        };
        assert_eq!(reply, b"udp ping", "{who}");
        let status = child.wait().unwrap();
        assert!(status.success(), "{who}: {status}");
    }
}

/// `imgfs run`'s pasta, found through its keeper (a child of the supervisor `pid`).
fn pasta_of(pid: u32) -> Option<(u32, u32)> {
    let parent_of = |p: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()
    };
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // Debian's pasta runs the build for this CPU: `passt.avx2`, say.
        let is_pasta = std::fs::read_to_string(format!("/proc/{p}/comm"))
            .is_ok_and(|c| c.trim() == "pasta" || c.starts_with("passt"));
        if let (true, Some(keeper)) = (is_pasta, parent_of(p))
            && parent_of(keeper) == Some(pid)
        {
            return Some((keeper, p));
        }
    }
    None
}

/// `kill -9` of `imgfs run` leaves no network helper: its keeper and pasta go with it.
#[test]
fn kill_9_of_imgfs_run_leaves_no_network_helper() {
    let _docker = require_images();
    let mut child = imgfs()
        .arg("run")
        .arg("--cache-dir")
        .arg(shared_cache())
        .arg(DEBIAN_IMAGE)
        .args(["--", "sleep", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut found = None;
    wait_until("pasta runs", || {
        found = pasta_of(child.id());
        found.is_some()
    });
    let (keeper, pasta) = found.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |s| s.contains(") Z "))
    };
    wait_until("the keeper and pasta are gone", || {
        gone(keeper) && gone(pasta)
    });
}

/// /etc/hosts, /etc/resolv.conf and /etc/hostname are what `docker run --network none`
/// writes for the same `--add-host`, `--dns` and `--hostname` (and for none of them); on
/// the bridge network, /etc/hosts ends with the sandbox's own address and name, as on
/// docker's bridge.
#[test]
fn etc_files_are_docker_s() {
    let _docker = require_images();
    let show = [
        "sh",
        "-c",
        "cat /etc/hosts; echo --; cat /etc/resolv.conf; echo --; cat /etc/hostname",
    ];
    let flags: [&[&str]; 2] = [
        &[
            "--add-host",
            "foo:10.1.2.3",
            "--add-host",
            "bar.example:192.0.2.8",
            "--dns",
            "192.0.2.53",
            "--hostname",
            "box",
        ],
        &["--hostname", "box"],
    ];
    for f in flags {
        let docker = output(
            Command::new("docker")
                .args(["run", "--rm", "--network", "none", "--entrypoint", ""])
                .args(f)
                .arg(DEBIAN_IMAGE)
                .args(show),
        );
        let mut opts = vec!["--network", "none"];
        opts.extend(f);
        let ours = run_in(DEBIAN_IMAGE, &opts, &show);
        assert_eq!(assert_ok(&ours), assert_ok(&docker), "{f:?}");
    }
    let bridge = run_in(DEBIAN_IMAGE, &["--hostname", "box"], &["cat", "/etc/hosts"]);
    assert!(
        assert_ok(&bridge).ends_with("\n10.0.2.100\tbox\n"),
        "{}",
        text(&bridge.stdout)
    );
}

/// Network flags that cannot work are one clear line and exit 125, before anything starts.
#[test]
fn bad_network_flags_fail_with_one_line() {
    let _docker = require_images();
    for (opts, says) in [
        (
            &["--network", "none", "-p", "8080:80"][..],
            "--publish needs --network bridge",
        ),
        (&["-p", "80"][..], "bad --publish '80'"),
        (&["--dns", "nameserver"][..], "bad --dns 'nameserver'"),
        (&["--add-host", "nohost"][..], "bad --add-host 'nohost'"),
    ] {
        let out = run_in(DEBIAN_IMAGE, opts, &["true"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{opts:?}: {err}");
        assert!(
            err.contains(says) && err.lines().count() == 1,
            "{opts:?}: {err}"
        );
    }
}
