//! Pushes of artifacts, anonymously, with Basic credentials and with a token that allows
//! push, and the referrers of an image found again, through the API or the tag fallback.

use super::*;

const ARTIFACT: &str = "application/vnd.imgfs.test.index.v1";
const OTHER_ARTIFACT: &str = "application/vnd.imgfs.test.other.v1";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// An artifact manifest with one layer of `payload` (pushed here) and `subject`.
fn push_artifact(
    registry: &Registry,
    subject: &serde_json::Value,
    artifact_type: &str,
    payload: &[u8],
    n: u32,
) -> (Vec<u8>, String) {
    let empty = registry.push_blob(b"{}").unwrap();
    let layer = registry.push_blob(payload).unwrap();
    assert_eq!(layer.to_string(), sha256(payload));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY, "digest": empty.to_string(), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": layer.to_string(),
                    "size": payload.len()}],
        "subject": subject,
        "annotations": {"org.imgfs.test.n": n.to_string()},
    }))
    .unwrap();
    let subject_digest = digest_of(subject["digest"].as_str().unwrap());
    let d = registry
        .push_referrer(&subject_digest, &manifest, artifact_type)
        .unwrap();
    assert_eq!(d.to_string(), sha256(&manifest));
    (manifest, d.to_string())
}

#[test]
fn pushes_artifacts_and_finds_them_as_referrers() {
    let work = TempDir::new("imgfs-registry-push");
    let fixture = write_layout(&work.path().join("layout"));
    let reg = RealRegistry::start();
    push(&reg, &fixture, "1");
    let opts = options(auth_file(work.path(), &reg.addr, None));
    let (image, _) = registry::open(&format!("{}/{REPO}:1", reg.addr), &opts).unwrap();
    let subject = serde_json::json!({
        "mediaType": image.manifest_media_type.as_deref().unwrap(),
        "digest": image.manifest_digest.as_deref().unwrap(),
        "size": image.manifest_size.unwrap(),
    });
    assert_eq!(
        subject["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let registry = Registry::connect_repository(&format!("{}/{REPO}", reg.addr), &opts).unwrap();
    let subject_digest = digest_of(&fixture.manifest_digest);
    // The subject descriptor is the manifest's own.
    let (bytes, media_type) = registry.manifest_by_digest(&subject_digest).unwrap();
    assert_eq!(bytes.len() as u64, image.manifest_size.unwrap());
    assert_eq!(media_type.as_deref(), image.manifest_media_type.as_deref());
    assert!(
        registry
            .referrers(&subject_digest, ARTIFACT)
            .unwrap()
            .is_empty()
    );

    let (first, d1) = push_artifact(&registry, &subject, ARTIFACT, b"first index", 1);
    let found = registry.referrers(&subject_digest, ARTIFACT).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].digest().to_string(), d1);
    assert_eq!(found[0].size(), first.len() as u64);
    assert_eq!(
        found[0]
            .artifact_type()
            .as_ref()
            .map(|t| t.to_string())
            .as_deref(),
        Some(ARTIFACT)
    );
    assert_eq!(
        found[0].annotations().as_ref().unwrap()["org.imgfs.test.n"],
        "1"
    );
    // What a referrer names reads back, verified.
    let (bytes, media_type) = registry.manifest_by_digest(found[0].digest()).unwrap();
    assert!(bytes == first);
    assert_eq!(
        media_type.as_deref(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    let layer = digest_of(&sha256(b"first index"));
    assert_eq!(
        registry.blob_bytes(&layer, 11, 1 << 20).unwrap(),
        b"first index"
    );
    let big = registry.blob_bytes(&layer, 11, 10).unwrap_err().to_string();
    assert!(
        big.ends_with("11 bytes, more than the 10 read whole"),
        "{big}"
    );

    // A second of the same type, one of another type, and the first pushed again.
    let (_, d2) = push_artifact(&registry, &subject, ARTIFACT, b"second index", 2);
    let (_, d3) = push_artifact(&registry, &subject, OTHER_ARTIFACT, b"other", 3);
    push_artifact(&registry, &subject, ARTIFACT, b"first index", 1);
    let mut found: Vec<String> = registry
        .referrers(&subject_digest, ARTIFACT)
        .unwrap()
        .iter()
        .map(|d| d.digest().to_string())
        .collect();
    found.sort();
    let mut want = vec![d1.clone(), d2];
    want.sort();
    assert_eq!(found, want);
    let other = registry.referrers(&subject_digest, OTHER_ARTIFACT).unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].digest().to_string(), d3);
    // The registry lacks the API: the index tagged after the subject holds them.
    let tag = fixture.manifest_digest.replacen(':', "-", 1);
    let body = ureq::get(format!("http://{}/v2/{REPO}/manifests/{tag}", reg.addr))
        .header("Accept", "application/vnd.oci.image.index.v1+json")
        .call()
        .unwrap()
        .body_mut()
        .read_to_vec()
        .unwrap();
    let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3, "{index}");
    assert!(
        reg.log().contains("/referrers/"),
        "the referrers API was not tried"
    );

    // A subject that is not the manifest's is refused before anything is pushed.
    let (manifest, _) = registry.manifest_by_digest(&digest_of(&d1)).unwrap();
    let wrong = registry
        .push_referrer(&digest_of(&fixture.layers[0].0), &manifest, ARTIFACT)
        .unwrap_err()
        .to_string();
    assert!(
        wrong.contains("the manifest's subject is sha256:"),
        "{wrong}"
    );
    // A tag pushed plainly: the registry does not index subjects itself.
    let (d, indexed) = registry
        .push_manifest(
            "pushed",
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
        .unwrap();
    assert_eq!((d.to_string(), indexed), (d1, false));
}

#[test]
fn pushes_with_basic_auth() {
    let work = TempDir::new("imgfs-registry-push-basic");
    let reg = RealRegistry::start_with_htpasswd(USER, PASSWORD);
    let opts = options(auth_file(work.path(), &reg.addr, Some((USER, PASSWORD))));
    let registry = Registry::connect_repository(&format!("{}/{REPO}", reg.addr), &opts).unwrap();
    let d = registry.push_blob(b"pushed with a password").unwrap();
    assert_eq!(
        registry.blob_bytes(&d, 22, 100).unwrap(),
        b"pushed with a password"
    );
    let none = Registry::connect_repository(
        &format!("{}/{REPO}", reg.addr),
        &options(auth_file(work.path(), &reg.addr, None)),
    )
    .unwrap();
    let e = none.push_blob(b"x").unwrap_err().to_string();
    assert!(
        e.contains("asks for credentials and none are configured"),
        "{e}"
    );
}

#[test]
fn pushes_with_a_token_that_allows_push() {
    let work = TempDir::new("imgfs-registry-push-token");
    let fixture = write_layout(&work.path().join("layout"));
    let reg = RealRegistry::start();
    push(&reg, &fixture, "1");
    let front = Front::start(
        &reg.addr,
        &FrontOptions {
            credentials: Some((USER.into(), PASSWORD.into())),
            ..FrontOptions::default()
        },
    );
    let opts = options(auth_file(work.path(), &front.addr, Some((USER, PASSWORD))));
    let registry = Registry::connect_repository(&format!("{}/{REPO}", front.addr), &opts).unwrap();
    let subject = digest_of(&fixture.manifest_digest);
    let (bytes, media_type) = registry.manifest_by_digest(&subject).unwrap();
    let descriptor = serde_json::json!({
        "mediaType": media_type.unwrap(), "digest": fixture.manifest_digest, "size": bytes.len(),
    });
    let (_, d) = push_artifact(&registry, &descriptor, ARTIFACT, b"through a token", 1);
    let found = registry.referrers(&subject, ARTIFACT).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].digest().to_string(), d);
    // A pull token first; the first write is refused and a token for both is fetched.
    let tokens: Vec<String> = front
        .log_lines()
        .into_iter()
        .filter(|l| l.starts_with("token "))
        .collect();
    assert_eq!(
        tokens,
        [
            format!("token repository:{REPO}:pull"),
            format!("token repository:{REPO}:pull,push")
        ]
    );
    assert!(front.count("REQ PUT ") >= 4, "{:?}", front.log_lines());
}

#[test]
fn referrers_from_the_api_are_paged_and_filtered_here() {
    let work = TempDir::new("imgfs-registry-referrers-api");
    let wanted = "application/vnd.imgfs.test.paged.v1+json";
    let subject = sha256(b"subject");
    let descriptor = |n: u8, artifact_type: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&[n]), "size": n, "artifactType": artifact_type,
        })
    };
    let pages = [
        serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [descriptor(1, wanted), descriptor(2, OTHER_ARTIFACT)]}),
        serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [descriptor(3, wanted)]}),
    ];
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let addr = serve(Arc::new(move |req: &Request| {
        log.lock().unwrap().push(req.path.clone());
        let index = ("Content-Type", "application/vnd.oci.image.index.v1+json");
        if req.path.ends_with("&page=2") {
            return respond(200, &[index], serde_json::to_vec(&pages[1]).unwrap());
        }
        if req.path.starts_with("/v2/api/referrers/") {
            let next = format!("<{}&page=2>; rel=\"next\"", req.path);
            return respond(
                200,
                &[index, ("Link", &next)],
                serde_json::to_vec(&pages[0]).unwrap(),
            );
        }
        respond(404, &[], "")
    }));
    let opts = options(auth_file(work.path(), &addr, None));
    let registry = Registry::connect_repository(&format!("{addr}/api"), &opts).unwrap();
    let found: Vec<String> = registry
        .referrers(&digest_of(&subject), wanted)
        .unwrap()
        .iter()
        .map(|d| d.digest().to_string())
        .collect();
    assert_eq!(found, [sha256(&[1]), sha256(&[3])]);
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen[0],
        format!(
            "/v2/api/referrers/{subject}?artifactType=application/vnd.imgfs.test.paged.v1%2Bjson"
        )
    );
    assert_eq!(seen.len(), 2);
}
