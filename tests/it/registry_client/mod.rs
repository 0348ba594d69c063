//! The registry client against a real registry: Debian's `docker-registry` on a loopback port,
//! filled by `skopeo copy` from an OCI layout these tests write (a small layer and a 32 MiB one
//! of noise, an image for this machine and an index of two platforms).
//!
//! Authentication is checked with the registry's own htpasswd (Basic) and with a token front
//! written here, which answers 401 with a Bearer challenge, issues tokens, expires them on
//! demand and redirects blobs to another address (where `Authorization` must not arrive).
//! Faults are real: a blob's file corrupted in the registry's storage, the registry killed in
//! the middle of a blob (and started again, or not), and a fake registry for answers a real
//! one does not give (too large, a lying digest, 5xx, 429, 403).
//!
//! Byte ranges of a blob are read from the registry itself (which answers several ranges as
//! multipart) and through tests/fixtures/registry-front.py, which answers them as other
//! servers do: the whole blob, a refusal of several ranges, parts out of order, merged or not
//! asked for, and blobs redirected to storage links that expire. Artifacts are pushed to the
//! registry and found again as referrers of an image (it lacks the referrers API, so through
//! the tag fallback).
//!
//! Here are the fixture and the helpers; [`fake`] holds the servers written here, and the
//! tests are in [`pulls`], [`ranges`], [`pushes`] and [`hosts`] (registries configured by
//! hosts.toml).

// Lists of one byte range are what several tests ask for.
#![allow(clippy::single_range_in_vec_init)]

mod fake;
mod hosts;
mod pulls;
mod pushes;
mod ranges;

use fake::*;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{
    Front, FrontOptions, Registry as RealRegistry, RegistryConfig, TempDir, free_port,
};
use imgfs::source::registry::{self, Registry, RegistryOptions, Retry};
use imgfs::source::{Image, LayerSource, Platform, SourceError};
use oci_spec::image::Digest;
use sha2::Digest as _;

/// Size of the big layer's one file: well beyond what loopback socket buffers hold, so that a
/// registry killed after the first MiB has not sent the rest.
const BIG: usize = 32 << 20;
const REPO: &str = "imgfs/app";
const USER: &str = "alice";
const PASSWORD: &str = "s3cret";

fn sha256(bytes: &[u8]) -> String {
    let hash = sha2::Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Bytes no compressor shrinks (xorshift64).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// What the layout holds, to check the pulled image against.
struct Fixture {
    layout: PathBuf,
    /// (digest, bytes as stored) bottom first.
    layers: Vec<(String, Vec<u8>)>,
    manifest_digest: String,
    config_digest: String,
    /// The index's other platform and its config's digest.
    other: (Platform, String),
}

/// Writes an OCI layout with the tags `1` (a manifest for this machine) and `multi` (an
/// index of it and one for another platform).
fn write_layout(dir: &Path) -> Fixture {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(&digest["sha256:".len()..]), bytes).unwrap();
        digest
    };
    let small_tar = tar_of(&[("hello.txt", b"hello from the registry\n")]);
    let small = gzip(&small_tar);
    // Compressed, as skopeo compresses what it pushes to a registry: so it pushes these as
    // they are, and the digests here are the registry's.
    let big_tar = tar_of(&[("noise.bin", &noise(BIG, 0x9e37_79b9_7f4a_7c15))]);
    let big = gzip(&big_tar);
    let layers = vec![(put(&small), small.clone()), (put(&big), big.clone())];
    let diff_ids = [sha256(&small_tar), sha256(&big_tar)];
    let host = Platform::host();
    let other = Platform {
        os: "linux".into(),
        architecture: if host.architecture == "s390x" {
            "ppc64le"
        } else {
            "s390x"
        }
        .into(),
        variant: None,
    };
    let config_for = |p: &Platform| {
        let mut c = serde_json::json!({
            "architecture": p.architecture, "os": p.os,
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        if let Some(v) = &p.variant {
            c["variant"] = v.clone().into();
        }
        serde_json::to_vec(&c).unwrap()
    };
    let manifest_for = |config: &[u8]| {
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(config), "size": config.len()},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                 "digest": layers[0].0, "size": layers[0].1.len()},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                 "digest": layers[1].0, "size": layers[1].1.len()},
            ],
        });
        serde_json::to_vec(&m).unwrap()
    };
    let platform_json = |p: &Platform| {
        let mut j = serde_json::json!({"architecture": p.architecture, "os": p.os});
        if let Some(v) = &p.variant {
            j["variant"] = v.clone().into();
        }
        j
    };
    let config = config_for(&host);
    let other_config = config_for(&other);
    let manifest = manifest_for(&config);
    let other_manifest = manifest_for(&other_config);
    put(&config);
    put(&other_config);
    put(&manifest);
    put(&other_manifest);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": sha256(&other_manifest), "size": other_manifest.len(),
             "platform": platform_json(&other)},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": sha256(&manifest), "size": manifest.len(),
             "platform": platform_json(&host)},
        ],
    }))
    .unwrap();
    put(&index);
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": sha256(&manifest), "size": manifest.len(),
             "annotations": {"org.opencontainers.image.ref.name": "1"}},
            {"mediaType": "application/vnd.oci.image.index.v1+json",
             "digest": sha256(&index), "size": index.len(),
             "annotations": {"org.opencontainers.image.ref.name": "multi"}},
        ],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    Fixture {
        layout: dir.to_path_buf(),
        layers,
        manifest_digest: sha256(&manifest),
        config_digest: sha256(&config),
        other: (other, sha256(&other_config)),
    }
}

/// Pushes the layout's `tag` (an index with all its images) as `REPO:tag`.
#[track_caller]
fn push(reg: &RealRegistry, fixture: &Fixture, tag: &str) {
    reg.push(
        &format!("oci:{}:{tag}", fixture.layout.display()),
        &format!("{REPO}:{tag}"),
    );
}

/// An auth file with `auths` for `host` (none when `creds` is `None`).
fn auth_file(dir: &Path, host: &str, creds: Option<(&str, &str)>) -> PathBuf {
    use base64::Engine as _;
    let auths = match creds {
        Some((u, p)) => serde_json::json!({
            host: {"auth": base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))}
        }),
        None => serde_json::json!({}),
    };
    let path = dir.join(format!(
        "auth-{}.json",
        AUTH_FILES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(
        &path,
        serde_json::to_vec(&serde_json::json!({"auths": auths})).unwrap(),
    )
    .unwrap();
    path
}
static AUTH_FILES: AtomicUsize = AtomicUsize::new(0);

/// Options with quick retries and credentials from `auth` only.
fn options(auth: PathBuf) -> RegistryOptions {
    RegistryOptions {
        auth_file: Some(auth),
        retry: Retry {
            tries: 4,
            first_delay: Duration::from_millis(200),
        },
        ..RegistryOptions::default()
    }
}

fn read_layer(registry: &Registry, image: &Image, i: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    registry
        .open_layer(&image.layers[i])
        .map_err(std::io::Error::other)?
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Opens `reference` and checks the image and every layer's bytes against the fixture.
#[track_caller]
fn pull_and_check(reference: &str, options: &RegistryOptions, fixture: &Fixture) -> Registry {
    let (image, registry) =
        registry::open(reference, options).unwrap_or_else(|e| panic!("{reference}: {e}"));
    assert_eq!(
        image.manifest_digest.as_deref(),
        Some(fixture.manifest_digest.as_str())
    );
    assert_eq!(image.config_digest, fixture.config_digest);
    assert_eq!(image.layers.len(), fixture.layers.len());
    for (i, (digest, bytes)) in fixture.layers.iter().enumerate() {
        assert_eq!(
            image.layers[i].digest.as_ref().unwrap().to_string(),
            *digest
        );
        let got = read_layer(&registry, &image, i).unwrap_or_else(|e| panic!("layer {i}: {e}"));
        assert!(got == *bytes, "layer {i} differs");
    }
    registry
}

fn error_of<T>(result: Result<T, SourceError>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn digest_of(s: &str) -> Digest {
    Digest::try_from(s).unwrap()
}
