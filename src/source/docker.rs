//! The Docker source, through the Engine API (bollard) only.
//!
//! Connects honouring `DOCKER_HOST` (unix and tcp) with a pinned API version (negotiated
//! only when an older daemon refuses it); a dead daemon fails at once naming the endpoint.
//! Images are resolved among the daemon's own, and pulled only when asked. An export goes through a throwaway container that is created, never started, and
//! removed in every case — success, error, or SIGINT/SIGTERM during the export. Containers are
//! labelled with the exporting process id so that one left by a killed imgfs is removed by the
//! next export. A signal during an export ends it with [`DockerError::Interrupted`], which
//! names the exit status the process should end with.

use std::io::{self, Read};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
};
use futures_util::TryStreamExt;
use tokio::runtime::Runtime;

/// Label carried by every export container; its value is the exporting process id.
const EXPORT_LABEL: &str = "io.imgfs.export-pid";
/// `create_container` refuses an image with no command; the container never starts.
const PLACEHOLDER_CMD: &str = "/imgfs-export-placeholder";
/// Where bollard connects when DOCKER_HOST is unset.
const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";
/// API version spoken without asking: Docker 20.10's, which newer engines and Podman's
/// compatible service still accept. Skipping the version request saves a round trip on
/// every warm start; an older daemon that refuses it gets a negotiation and a retry.
const PINNED_API: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};
/// Seconds a request may wait for the daemon's answer headers.
const REQUEST_TIMEOUT_SECS: u64 = 120;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker daemon at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("image '{0}' not found in local Docker storage (--pull fetches it from its registry)")]
    NotFound(String),
    #[error("Docker daemon at {endpoint} failed to {action}: {reason}")]
    Api {
        endpoint: String,
        action: String,
        reason: String,
    },
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(io::Error),
    #[error("export interrupted; its container was removed")]
    Interrupted { signal: i32 },
}

impl DockerError {
    /// The status to exit with after this error, when it calls for one of its own: 128 plus
    /// the signal that interrupted an export, as a shell reports a process the signal ended.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            DockerError::Interrupted { signal } => Some(128 + signal),
            _ => None,
        }
    }
}

/// A resolved image: its id and the daemon's description of it (config, tags, ...).
#[derive(Clone, Debug)]
pub(crate) struct Image {
    /// Content-addressed id, e.g. `sha256:...`.
    pub id: String,
    /// The daemon's image inspect document, kept for the runner (Env, Cmd, Entrypoint, ...).
    pub inspect_json: Vec<u8>,
}

/// A connection to a Docker-compatible daemon.
pub(crate) struct Docker {
    rt: Runtime,
    client: bollard::Docker,
    endpoint: String,
}

impl Docker {
    /// Connects to `DOCKER_HOST` (`unix://` or `tcp://`), else the default socket. No request
    /// is made yet: the first one (a resolve) shows whether the daemon answers.
    pub(crate) fn connect() -> Result<Docker, DockerError> {
        let endpoint =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string());
        let unreachable = |reason: String| DockerError::Unreachable {
            endpoint: endpoint.clone(),
            reason,
        };
        // One thread, the caller's: every request is driven by a block_on, so resolving an
        // image starts no thread and the runner can build its sandbox in this very process.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(DockerError::Runtime)?;
        let client = if endpoint.starts_with("unix://") {
            bollard::Docker::connect_with_unix(&endpoint, REQUEST_TIMEOUT_SECS, &PINNED_API)
        } else if endpoint.starts_with("tcp://") || endpoint.starts_with("http://") {
            bollard::Docker::connect_with_http(&endpoint, REQUEST_TIMEOUT_SECS, &PINNED_API)
        } else {
            return Err(unreachable(
                "only unix:// and tcp:// endpoints are supported".into(),
            ));
        };
        let client = client.map_err(|e| unreachable(error_text(&e)))?;
        Ok(Docker {
            rt,
            client,
            endpoint,
        })
    }

    /// Whether an error means "the daemon does not speak the pinned API version".
    fn version_refused(e: &bollard::errors::Error) -> bool {
        matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 400, message }
            if message.contains("version"))
    }

    /// Negotiates down to the daemon's API version, for a daemon older than the pinned one.
    fn negotiate(&mut self) -> Result<(), DockerError> {
        let client = self.client.clone();
        self.client =
            self.rt
                .block_on(client.negotiate_version())
                .map_err(|e| DockerError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    reason: error_text(&e),
                })?;
        Ok(())
    }

    fn api(&self, action: &str, e: bollard::errors::Error) -> DockerError {
        DockerError::Api {
            endpoint: self.endpoint.clone(),
            action: action.to_string(),
            reason: error_text(&e),
        }
    }

    /// Resolves a reference among the images the daemon already has.
    pub(crate) fn resolve(&mut self, reference: &str) -> Result<Image, DockerError> {
        let mut inspect = self.rt.block_on(self.client.inspect_image(reference));
        if inspect.as_ref().is_err_and(Self::version_refused) {
            self.negotiate()?;
            inspect = self.rt.block_on(self.client.inspect_image(reference));
        }
        let inspect = inspect.map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => DockerError::NotFound(reference.to_string()),
            e if is_connection_error(&e) => DockerError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: error_text(&e),
            },
            e => self.api(&format!("inspect image '{reference}'"), e),
        })?;
        let id = inspect.id.clone().ok_or_else(|| DockerError::Api {
            endpoint: self.endpoint.clone(),
            action: format!("inspect image '{reference}'"),
            reason: "the answer has no image id".into(),
        })?;
        let inspect_json = serde_json::to_vec_pretty(&inspect).unwrap_or_default();
        Ok(Image { id, inspect_json })
    }

    /// Asks the daemon to pull `reference` from its registry (a missing tag means `latest`,
    /// as with docker pull); `status` gets each line of the daemon's progress.
    pub(crate) fn pull(
        &mut self,
        reference: &str,
        status: &mut dyn FnMut(&str),
    ) -> Result<(), DockerError> {
        let (name, tag) = split_tag(reference);
        let options = CreateImageOptions {
            from_image: Some(name.to_string()),
            tag: tag.map(str::to_string),
            ..Default::default()
        };
        let mut stream = Box::pin(self.client.create_image(Some(options), None, None));
        loop {
            match self.rt.block_on(stream.try_next()) {
                Ok(Some(info)) => {
                    let done = info
                        .progress_detail
                        .and_then(|p| match (p.current, p.total) {
                            (Some(c), Some(t)) if t > 0 => {
                                Some(format!("{:.1}/{:.1} MB", c as f64 / 1e6, t as f64 / 1e6))
                            }
                            _ => None,
                        });
                    let line: Vec<String> = [info.id, info.status, done]
                        .into_iter()
                        .flatten()
                        .filter(|s| !s.is_empty())
                        .collect();
                    status(&line.join(" "));
                }
                Ok(None) => return Ok(()),
                Err(e)
                    if is_connection_error(&e)
                        && !matches!(e, bollard::errors::Error::DockerStreamError { .. }) =>
                {
                    return Err(DockerError::Unreachable {
                        endpoint: self.endpoint.clone(),
                        reason: error_text(&e),
                    });
                }
                Err(e) => return Err(self.api(&format!("pull '{reference}'"), e)),
            }
        }
    }

    /// Exports the image's flattened filesystem: `consume` reads the tar stream on the calling
    /// thread, each read driving the runtime until the stream has bytes for it, so memory stays
    /// bounded by the stream buffers. The
    /// container is removed afterwards whatever happens; on SIGINT/SIGTERM it is removed,
    /// `on_signal` runs (to drop half-written files), the stream fails from then on, and the
    /// export ends with [`DockerError::Interrupted`].
    pub(crate) fn export<T>(
        &self,
        image: &Image,
        on_signal: impl FnOnce() + Send + 'static,
        consume: impl FnOnce(&mut dyn Read) -> io::Result<T>,
    ) -> Result<io::Result<T>, DockerError> {
        self.remove_stale_exports();
        let mut labels = std::collections::HashMap::new();
        labels.insert(EXPORT_LABEL.to_string(), std::process::id().to_string());
        let body = ContainerCreateBody {
            image: Some(image.id.clone()),
            cmd: Some(vec![PLACEHOLDER_CMD.to_string()]),
            entrypoint: Some(vec![]),
            labels: Some(labels),
            network_disabled: Some(true),
            ..Default::default()
        };
        let created = self
            .rt
            .block_on(self.client.create_container(None, body))
            .map_err(|e| self.api("create the export container", e))?;
        let id = created.id;

        // Removes the container if a signal arrives while the export runs, and says which.
        let (interrupt, interrupted) = tokio::sync::watch::channel(None);
        let watcher = {
            let client = self.client.clone();
            let id = id.clone();
            self.rt.spawn(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                let signo = tokio::select! {
                    _ = int.recv() => libc::SIGINT,
                    _ = term.recv() => libc::SIGTERM,
                };
                let _ = client.remove_container(&id, Some(force_remove())).await;
                on_signal();
                log::debug!("export interrupted by signal {signo}; its container was removed");
                let _ = interrupt.send(Some(signo));
            })
        };

        let stream = self.client.export_container(&id).map_err(io::Error::other);
        let reader = tokio_util::io::StreamReader::new(stream);
        let result = consume(&mut BlockingReader {
            rt: &self.rt,
            inner: reader,
            interrupted: interrupted.clone(),
        });
        watcher.abort();
        if let Some(signal) = *interrupted.borrow() {
            return Err(DockerError::Interrupted { signal });
        }
        let removed = self
            .rt
            .block_on(self.client.remove_container(&id, Some(force_remove())));
        if let Err(e) = removed {
            // The export itself may have worked; a leftover container is still an error.
            return Err(self.api(&format!("remove export container {id}"), e));
        }
        Ok(result)
    }

    /// Removes export containers whose imgfs process is gone (killed during an export).
    fn remove_stale_exports(&self) {
        let mut filters = std::collections::HashMap::new();
        filters.insert("label".to_string(), vec![EXPORT_LABEL.to_string()]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let Ok(list) = self.rt.block_on(self.client.list_containers(Some(options))) else {
            return;
        };
        for c in list {
            let pid = c
                .labels
                .as_ref()
                .and_then(|l| l.get(EXPORT_LABEL))
                .and_then(|p| p.parse::<i32>().ok());
            let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            if let (false, Some(id)) = (alive, c.id) {
                log::info!("removing export container {id} left by a killed imgfs");
                let _ = self
                    .rt
                    .block_on(self.client.remove_container(&id, Some(force_remove())));
            }
        }
    }
}

/// A synchronous reader over an asynchronous one: each read runs the runtime (the HTTP
/// connection and the signal watcher with it) until the read completes, or fails once the
/// watcher says a signal interrupted the export.
struct BlockingReader<'a, R> {
    rt: &'a Runtime,
    inner: R,
    /// The signal that interrupted the export, once one did.
    interrupted: tokio::sync::watch::Receiver<Option<i32>>,
}

impl<R: tokio::io::AsyncRead + Unpin> Read for BlockingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        let BlockingReader {
            rt,
            inner,
            interrupted,
        } = self;
        rt.block_on(async {
            tokio::select! {
                read = inner.read(buf) => read,
                () = interruption(interrupted) => Err(io::Error::other("the export was interrupted")),
            }
        })
    }
}

/// Waits until a signal interrupts the export; forever when the watcher ended without one.
async fn interruption(interrupted: &mut tokio::sync::watch::Receiver<Option<i32>>) {
    if interrupted.wait_for(Option::is_some).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Splits `name[:tag]` as docker pull does: a digest reference (`name@sha256:…`) is pulled
/// as it is, a name without a tag gets `latest`. A `:` before the last `/` is a registry port.
fn split_tag(reference: &str) -> (&str, Option<&str>) {
    if reference.contains('@') {
        return (reference, None);
    }
    let last = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last..].rfind(':') {
        Some(i) => (&reference[..last + i], Some(&reference[last + i + 1..])),
        None => (reference, Some("latest")),
    }
}

/// Whether an error is about reaching the daemon rather than about the request.
fn is_connection_error(e: &bollard::errors::Error) -> bool {
    !matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { .. }
            | bollard::errors::Error::JsonDataError { .. }
            | bollard::errors::Error::JsonSerdeError { .. }
    )
}

fn force_remove() -> RemoveContainerOptions {
    RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    }
}

/// The daemon's own message when there is one, else bollard's description.
fn error_text(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        e => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(cause) = src {
                let c = cause.to_string();
                if !s.contains(&c) {
                    s.push_str(": ");
                    s.push_str(&c);
                }
                src = cause.source();
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_as_docker_pull_reads_them() {
        assert_eq!(split_tag("python"), ("python", Some("latest")));
        assert_eq!(split_tag("python:3.12"), ("python", Some("3.12")));
        assert_eq!(
            split_tag("localhost:5000/a/b"),
            ("localhost:5000/a/b", Some("latest"))
        );
        assert_eq!(
            split_tag("localhost:5000/a/b:v1"),
            ("localhost:5000/a/b", Some("v1"))
        );
        assert_eq!(split_tag("a/b@sha256:00"), ("a/b@sha256:00", None));
    }

    #[test]
    fn a_signal_ends_the_export_stream() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // A stream that never has bytes: only the interruption can end a read of it.
        let (silent, _open) = tokio::io::duplex(64);
        let (interrupt, interrupted) = tokio::sync::watch::channel(None);
        let mut reader = BlockingReader {
            rt: &rt,
            inner: silent,
            interrupted,
        };
        interrupt.send(Some(libc::SIGINT)).unwrap();
        let e = reader.read(&mut [0; 8]).unwrap_err();
        assert_eq!(e.to_string(), "the export was interrupted");
        // A watcher gone without a signal leaves reads alone.
        let (stream, mut writer) = tokio::io::duplex(64);
        rt.block_on(tokio::io::AsyncWriteExt::write_all(&mut writer, b"tar"))
            .unwrap();
        let (interrupt, interrupted) = tokio::sync::watch::channel(None);
        drop(interrupt);
        let mut reader = BlockingReader {
            rt: &rt,
            inner: stream,
            interrupted,
        };
        assert_eq!(reader.read(&mut [0; 8]).unwrap(), 3);
        let e = DockerError::Interrupted {
            signal: libc::SIGINT,
        };
        assert_eq!(e.exit_code(), Some(130));
        assert_eq!(
            e.to_string(),
            "export interrupted; its container was removed"
        );
        assert_eq!(DockerError::NotFound("a".into()).exit_code(), None);
    }
}
