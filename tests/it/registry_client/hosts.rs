//! Registries configured as containerd configures them (`--hosts-dir`: a directory per
//! registry holding a hosts.toml, or docker's certificate files): a CA of the registry's own,
//! trusted and checked; a client certificate the registry asks for; mirrors tried in order
//! for a registry that is not there.

use super::*;

/// A hosts directory with `hosts.toml` = `text` for registry `host`.
fn hosts_dir(work: &Path, host: &str, text: &str) -> PathBuf {
    let dir = work.join(format!(
        "hosts-{}",
        AUTH_FILES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(dir.join(host)).unwrap();
    std::fs::write(dir.join(host).join("hosts.toml"), text).unwrap();
    dir
}

fn with_hosts(auth: PathBuf, dir: PathBuf) -> RegistryOptions {
    RegistryOptions {
        hosts_dir: Some(dir),
        ..options(auth)
    }
}

/// A loopback registry whose certificate a CA of its own signed: with that CA in its
/// hosts.toml the pull is verified and works; with another CA it fails on the certificate
/// (so verification did happen, though loopback registries are otherwise unverified); with
/// the CA as docker's `ca.crt` it works too.
#[test]
fn a_registry_ca_from_hosts_toml_is_trusted_and_checked() {
    let work = TempDir::new("imgfs-registry-hosts");
    let fixture = write_layout(&work.path().join("layout"));
    let reg = RealRegistry::launch(RegistryConfig {
        tls: true,
        ..RegistryConfig::default()
    });
    push(&reg, &fixture, "1");
    let other = RealRegistry::launch(RegistryConfig {
        tls: true,
        ..RegistryConfig::default()
    });
    let reference = format!("{}/{REPO}:1", reg.addr);
    let auth = auth_file(work.path(), &reg.addr, None);
    let server = format!("server = \"https://{}\"\n", reg.addr);

    let good = hosts_dir(
        work.path(),
        &reg.addr,
        &format!("{server}ca = \"{}\"\n", reg.ca_cert().display()),
    );
    pull_and_check(&reference, &with_hosts(auth.clone(), good), &fixture);

    let wrong = hosts_dir(
        work.path(),
        &reg.addr,
        &format!("{server}ca = \"{}\"\n", other.ca_cert().display()),
    );
    let e = error_of(registry::open(&reference, &with_hosts(auth.clone(), wrong)));
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    let docker = work.path().join("certs.d");
    std::fs::create_dir_all(docker.join(&reg.addr)).unwrap();
    std::fs::copy(reg.ca_cert(), docker.join(&reg.addr).join("ca.crt")).unwrap();
    pull_and_check(&reference, &with_hosts(auth, docker), &fixture);
}

/// A registry that asks for a client certificate: refused without one, pulled with the one
/// its hosts.toml names.
#[test]
fn a_client_certificate_from_hosts_toml_is_presented() {
    let work = TempDir::new("imgfs-registry-hosts");
    let fixture = write_layout(&work.path().join("layout"));
    let plain = RealRegistry::start();
    push(&plain, &fixture, "1");
    let reg = RealRegistry::launch(RegistryConfig {
        client_certs: true,
        storage_from: Some(plain.storage()),
        ..RegistryConfig::default()
    });
    let reference = format!("{}/{REPO}:1", reg.addr);
    let auth = auth_file(work.path(), &reg.addr, None);
    let ca = reg.ca_cert();
    let without = hosts_dir(
        work.path(),
        &reg.addr,
        &format!("ca = \"{}\"\n", ca.display()),
    );
    let e = error_of(registry::open(
        &reference,
        &with_hosts(auth.clone(), without),
    ));
    assert!(e.contains(&reg.addr), "{e}");
    let (cert, key) = reg.client_cert();
    let with = hosts_dir(
        work.path(),
        &reg.addr,
        &format!(
            "ca = \"{}\"\nclient = [[\"{}\", \"{}\"]]\n",
            ca.display(),
            cert.display(),
            key.display()
        ),
    );
    pull_and_check(&reference, &with_hosts(auth, with), &fixture);
}

/// A registry name nothing answers for, with mirrors in its hosts.toml: the first mirror is
/// dead and passed over, a pull-only one (dead too: using it would fail) is not used, the
/// next one serves the image over plain HTTP.
#[test]
fn mirrors_in_hosts_toml_serve_a_registry_that_is_not_there() {
    let work = TempDir::new("imgfs-registry-hosts");
    let fixture = write_layout(&work.path().join("layout"));
    let reg = RealRegistry::start();
    push(&reg, &fixture, "1");
    let dead = format!("127.0.0.1:{}", free_port());
    let pull_only = format!("127.0.0.1:{}", free_port());
    let name = "registry.invalid:5000";
    let dir = hosts_dir(
        work.path(),
        name,
        &format!(
            "[host.\"http://{dead}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
             [host.\"http://{pull_only}\"]\n  capabilities = [\"pull\"]\n\
             [host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            reg.addr
        ),
    );
    let auth = auth_file(work.path(), name, None);
    pull_and_check(
        &format!("{name}/{REPO}:1"),
        &with_hosts(auth.clone(), dir),
        &fixture,
    );
    // Without the configuration the name reaches nothing.
    let e = error_of(registry::open(
        &format!("{name}/{REPO}:1"),
        &with_hosts(auth, work.path().join("no-hosts")),
    ));
    assert!(e.contains(name), "{e}");
}
