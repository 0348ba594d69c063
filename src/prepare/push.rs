//! `imgfs index push`: publishing an image's imgfs index. The registry image's merged index
//! is made as a whole fetch makes it (and reused if one did), a seek table is built per layer
//! from its blob — from the very stream a fetch of a missing layer reads ([`super::seeking`])
//! — and both go to the image's repository as an artifact referring to the image's manifest
//! ([`super::artifact`]).
//!
//! Takes a registry reference and the store; hands on what was pushed ([`Pushed`]). With a
//! recording, the artifact is pushed again with the spans a program read, for cold starts to
//! fetch first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use super::artifact::{self, Span};
use super::whole::whole;
use super::{Options, PrepareError};
use crate::cache::Cache;
use crate::index::seek::SeekTable;
use crate::source::registry::{Registry, RegistryOptions};
use crate::source::{Image, LayerSource, Platform, SourceError};

/// What `imgfs index push` did.
pub struct Pushed {
    /// The artifact manifest's digest.
    pub digest: String,
    /// Bytes of the merged index (compressed), of the seek tables and of their windows blobs.
    pub tree_bytes: u64,
    pub seek_bytes: u64,
    pub window_bytes: u64,
    /// The image's layers' compressed bytes, for scale.
    pub image_bytes: u64,
    pub spans: usize,
    /// Spans in the prefetch list (0 without `--record`).
    pub prefetch_spans: usize,
}

/// Runs a program over a lazy mount of the image whose config digest it is given, and
/// returns the spans it read (`LAYER SPAN` lines).
pub type Record<'a> = dyn FnMut(&str) -> Result<String, PrepareError> + 'a;

/// Layers whose seek tables are built at once (each streams its blob from the registry).
const PARALLEL_SEEKS: usize = 4;

/// Builds the imgfs index of the registry image `reference` — its merged index from the
/// store (filled first if missing), a seek table per layer from its blob — and pushes it to
/// the image's repository as an artifact referring to the image's manifest.
///
/// With `record`, the index is pushed, then `record` is called with the image's config
/// digest to run a program over a lazy mount of it and return the spans it read (`LAYER SPAN`
/// lines), and the index is pushed again with that list, for cold starts to fetch first.
pub fn push(
    reference: &str,
    cache: &Cache,
    options: Options,
    span: Span,
    record: Option<&mut Record<'_>>,
) -> Result<Pushed, PrepareError> {
    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    let registry_options = RegistryOptions {
        platform: platform.clone(),
        tls_verify: !options.insecure,
        auth_file: options.auth_file.clone(),
        hosts_dir: options.hosts_dir.clone(),
        ..RegistryOptions::default()
    };
    let (img, registry) = crate::source::registry::open(reference, &registry_options)?;
    let what = format!("docker://{reference}");
    let subject = subject_of(&img, &what)?;
    // The merged index, as a whole mount would make it (and reused if one did).
    let digest_ref = match reference.split_once('@') {
        Some((name, _)) => format!("{name}@{}", subject.digest()),
        None => {
            let name = strip_tag(reference);
            format!("{name}@{}", subject.digest())
        }
    };
    // Layers the store lacks are fetched once: the fill that stores them builds their seek
    // tables on the way.
    let seeking = super::seeking::Seeking::new(&registry, span);
    let full = whole(
        &crate::source::ImageRef::Registry(digest_ref),
        &img,
        &seeking,
        cache,
        Options {
            platform: Some(platform.clone()),
            insecure: options.insecure,
            auth_file: options.auth_file.clone(),
            hosts_dir: options.hosts_dir.clone(),
            report: options.report,
            ..Options::default()
        },
        &platform,
    )?;
    let tree = std::fs::read(&full.index_path).map_err(|source| PrepareError::Io {
        path: full.index_path.clone(),
        cause: source,
    })?;
    let built: Vec<Option<SeekTable>> = img
        .layers
        .iter()
        .map(|l| seeking.take(l).and_then(Result::ok))
        .collect();
    let tables = build_tables(&registry, &img, span, built)?;
    let tree_blob = zstd::bulk::compress(&tree, 19).map_err(|source| PrepareError::Io {
        path: full.index_path.clone(),
        cause: source,
    })?;
    let tree_desc = artifact::descriptor(artifact::TREE_MEDIA_TYPE, &tree_blob);
    let mut seek_descs = Vec::with_capacity(tables.len());
    let mut window_descs = Vec::with_capacity(tables.len());
    let mut seek_bytes = 0;
    let mut window_bytes = 0;
    let mut spans = 0;
    let pushing = |e| PrepareError::Source(SourceError::from(e));
    registry.push_blob(artifact::EMPTY).map_err(pushing)?;
    registry.push_blob(&tree_blob).map_err(pushing)?;
    for (layer, table) in img.layers.iter().zip(&tables) {
        let bytes = table.encode();
        seek_bytes += bytes.len() as u64;
        spans += table.spans().len();
        registry.push_blob(&bytes).map_err(pushing)?;
        let layer_digest = layer
            .digest
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default();
        let annotations = [(artifact::LAYER_ANNOTATION.to_string(), layer_digest)];
        let mut d = artifact::descriptor(artifact::SEEK_MEDIA_TYPE, &bytes);
        d.set_annotations(Some(annotations.clone().into()));
        seek_descs.push(d);
        let windows = table.windows_blob();
        window_bytes += windows.len() as u64;
        registry.push_blob(windows).map_err(pushing)?;
        let mut d = artifact::descriptor(artifact::WINDOWS_MEDIA_TYPE, windows);
        d.set_annotations(Some(annotations.into()));
        window_descs.push(d);
    }
    let manifest = artifact::manifest(&subject, &tree_desc, &seek_descs, &window_descs, None, span);
    let mut digest = registry
        .push_referrer(subject.digest(), &manifest, artifact::ARTIFACT_TYPE)
        .map_err(pushing)?;
    let mut prefetch_spans = 0;
    if let Some(record) = record {
        let text = record(&img.config_digest)?;
        let counts: Vec<usize> = tables.iter().map(|t| t.spans().len()).collect();
        let list: Vec<(u32, usize)> = crate::cache::sparse::parse_spans(&text, counts.len())
            .into_iter()
            .filter(|&(l, s)| s < counts[l as usize])
            .collect();
        if list.is_empty() {
            return Err(PrepareError::Source(SourceError::Invalid {
                what,
                why: "the recorded run read nothing from the image".into(),
            }));
        }
        prefetch_spans = list.len();
        let bytes: String = list.iter().map(|(l, s)| format!("{l} {s}\n")).collect();
        registry.push_blob(bytes.as_bytes()).map_err(pushing)?;
        let d = artifact::descriptor(artifact::PREFETCH_MEDIA_TYPE, bytes.as_bytes());
        let manifest = artifact::manifest(
            &subject,
            &tree_desc,
            &seek_descs,
            &window_descs,
            Some(&d),
            span,
        );
        digest = registry
            .push_referrer(subject.digest(), &manifest, artifact::ARTIFACT_TYPE)
            .map_err(pushing)?;
    }
    Ok(Pushed {
        digest: digest.to_string(),
        tree_bytes: tree_blob.len() as u64,
        seek_bytes,
        window_bytes,
        image_bytes: img.layers.iter().filter_map(|l| l.size).sum(),
        spans,
        prefetch_spans,
    })
}

/// `NAME[:TAG]` without its tag (a port's colon is not a tag's).
fn strip_tag(reference: &str) -> &str {
    match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => &reference[..i],
        _ => reference,
    }
}

/// The descriptor of the image's (platform) manifest: what the artifact refers to.
fn subject_of(img: &Image, what: &str) -> Result<oci_spec::image::Descriptor, PrepareError> {
    let invalid = |why: &str| {
        PrepareError::Source(SourceError::Invalid {
            what: what.to_string(),
            why: why.to_string(),
        })
    };
    let (Some(digest), Some(size), Some(media_type)) = (
        img.manifest_digest.as_deref(),
        img.manifest_size,
        img.manifest_media_type.as_deref(),
    ) else {
        return Err(invalid(
            "the registry did not describe the image's manifest",
        ));
    };
    let digest =
        crate::source::digest::parse(digest).map_err(|_| invalid("bad manifest digest"))?;
    Ok(oci_spec::image::Descriptor::new(
        oci_spec::image::MediaType::from(media_type),
        size,
        digest,
    ))
}

/// Streams every layer's blob from the registry once, building its seek table.
fn build_tables(
    registry: &Registry,
    img: &Image,
    span: Span,
    built: Vec<Option<SeekTable>>,
) -> Result<Vec<SeekTable>, PrepareError> {
    let results: Vec<Mutex<Option<Result<SeekTable, PrepareError>>>> =
        built.into_iter().map(|t| Mutex::new(t.map(Ok))).collect();
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..PARALLEL_SEEKS.min(img.layers.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(layer) = img.layers.get(i) else {
                        break;
                    };
                    if results[i].lock().is_some() {
                        continue; // built while the layer was fetched whole
                    }
                    let r = (|| {
                        let what = || format!("{}: layer {}", registry.describe(), layer.locator);
                        let mut stream = registry.open_layer(layer)?;
                        let kind = artifact::seek_compression(layer.compression);
                        let span = span.for_layer(layer.size);
                        let table = SeekTable::build(kind, &mut stream, span).map_err(|e| {
                            PrepareError::Source(SourceError::Invalid {
                                what: what(),
                                why: e.to_string(),
                            })
                        })?;
                        // The rest (if any) still counts for the blob's digest, checked at its end.
                        std::io::copy(&mut stream, &mut std::io::sink()).map_err(|source| {
                            PrepareError::LayerIo {
                                what: what(),
                                cause: source,
                            }
                        })?;
                        Ok(table)
                    })();
                    *results[i].lock() = Some(r);
                }
            });
        }
    });
    log::info!("seek tables built in {:?}", start.elapsed());
    results
        .into_iter()
        .map(|r| {
            r.into_inner().unwrap_or_else(|| {
                Err(PrepareError::Source(SourceError::Invalid {
                    what: registry.describe(),
                    why: "a layer was not read".into(),
                }))
            })
        })
        .collect()
}
