//! Where a lazy layer's bytes come from: the [`Fetch`] over the layer's registry.
//!
//! Takes the layer's [`Remote`] as the store keeps it (repository, digest, size, TLS and
//! credentials); hands on the ranges [`Registry::fetch_ranges`] reads. Guarantees: nothing
//! connects before the first read, so a mount never waits for the network; the layers of one
//! image share one client, its connections and its token.

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::Fetch;
use crate::cache::sparse::Remote;
use crate::source::registry::Registry;

/// Reads ranges of a blob from its registry, connecting on first use (so that a mount never
/// waits for the network, and a registry down at mount time is tried again at each read).
pub(crate) struct RegistryFetch {
    remote: Remote,
    digest: oci_spec::image::Digest,
    registry: Mutex<Option<Arc<Registry>>>,
}

/// Registry clients of this process by repository and options: the blobs of one image share
/// one client, its connections and its token, so a layer's first read does not connect anew.
type ClientKey = (
    String,
    bool,
    Option<std::path::PathBuf>,
    Option<std::path::PathBuf>,
);
type Clients = Mutex<Vec<(ClientKey, Arc<Registry>)>>;
static CLIENTS: Clients = Mutex::new(Vec::new());

impl RegistryFetch {
    pub(crate) fn new(remote: Remote) -> io::Result<RegistryFetch> {
        let digest = crate::source::digest::parse(&remote.digest)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(RegistryFetch {
            remote,
            digest,
            registry: Mutex::new(None),
        })
    }

    fn registry(&self) -> io::Result<Arc<Registry>> {
        use crate::source::registry::{RegistryOptions, Retry};
        if let Some(r) = &*self.registry.lock() {
            return Ok(r.clone());
        }
        let key = (
            self.remote.repository.clone(),
            self.remote.insecure,
            self.remote.auth_file.clone(),
            self.remote.hosts_dir.clone(),
        );
        // Held while connecting: layers read at once share the one client made.
        let mut clients = CLIENTS.lock();
        if let Some((_, r)) = clients.iter().find(|(k, _)| *k == key) {
            *self.registry.lock() = Some(r.clone());
            return Ok(r.clone());
        }
        let options = RegistryOptions {
            tls_verify: !self.remote.insecure,
            auth_file: self.remote.auth_file.clone(),
            hosts_dir: self.remote.hosts_dir.clone(),
            // The lazy reader tries again itself, within its own timeout.
            retry: Retry {
                tries: 2,
                first_delay: Duration::from_millis(200),
            },
            ..RegistryOptions::default()
        };
        let registry = Registry::connect_repository(&self.remote.repository, &options)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let registry = Arc::new(registry);
        *self.registry.lock() = Some(registry.clone());
        clients.push((key, registry.clone()));
        Ok(registry)
    }
}

impl Fetch for RegistryFetch {
    fn fetch(&self, ranges: &[Range<u64>]) -> io::Result<Vec<Vec<u8>>> {
        self.registry()?
            .fetch_ranges(&self.digest, self.remote.size, ranges)
            .map_err(|e| io::Error::other(e.to_string()))
    }
}
