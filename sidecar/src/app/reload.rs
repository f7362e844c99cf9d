//! Config from a file, re-read when it changes. The file's modification time and size are
//! polled; polling is portable, survives editors that replace files (and Kubernetes ConfigMap
//! symlink swaps), and a one-second delay is fine for config. A change is applied only once the
//! file has looked the same for one more poll: a writer that is not atomic could otherwise hand
//! us half a file, and half a file can be a valid config (say, one without listeners).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use portico_proxy_api::ProxyConfig;

use crate::runtime::Proxy;

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message, not a `source()`, so anyhow reports it once).
        error: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("{path} is {size} bytes; a config file may have at most {MAX_CONFIG_BYTES}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file is not a config (YAML or JSON).
    #[error("parsing {path}: {error}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error, with line and column (in the message, not a `source()`).
        error: serde_yaml::Error,
    },
}

/// The largest config file read (a config of 100,000 routes is about 10 MB of YAML).
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024 * 1024;

/// Reads and parses a config file (YAML, or JSON which is YAML too). Not validated yet.
pub fn load(path: &Path) -> Result<ProxyConfig, LoadError> {
    let read_error = |error| LoadError::Read {
        path: path.to_owned(),
        error,
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_CONFIG_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    serde_yaml::from_str(&text).map_err(|error| LoadError::Parse {
        path: path.to_owned(),
        error,
    })
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Applies `path` to `proxy` whenever it changes; a bad file is logged and refused while the
/// previous config keeps serving. Runs until the task is dropped.
pub async fn watch(proxy: Proxy, path: PathBuf, every: Duration) {
    let mut applied = stamp(&path);
    let mut seen = applied;
    loop {
        tokio::time::sleep(every).await;
        let now = stamp(&path);
        let settled = now == seen;
        seen = now;
        if now == applied || !settled {
            continue;
        }
        applied = now;
        // Reading and parsing a large file takes a while: not on a thread that serves.
        let file = path.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&file))
            .await
            .unwrap_or_else(|e| {
                Err(LoadError::Read {
                    path: path.clone(),
                    error: std::io::Error::other(e.to_string()),
                })
            });
        match loaded {
            Ok(cfg) => {
                let generation = cfg.generation;
                match proxy.apply(cfg).await {
                    Ok(()) => tracing::info!(path = %path.display(), generation, "config applied"),
                    Err(e) => tracing::error!(
                        path = %path.display(),
                        error = %e,
                        "config refused; the previous config keeps serving"
                    ),
                }
            }
            Err(e) => {
                proxy.count_refused();
                tracing::error!(error = %e, "config refused; the previous config keeps serving");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_over_the_cap_is_refused_without_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.yaml");
        // Sparse: the size without the bytes.
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        let err = load(&path).unwrap_err();
        assert!(
            matches!(err, LoadError::TooLarge { size, .. } if size == MAX_CONFIG_BYTES + 1),
            "{err}"
        );
        assert!(err.to_string().contains("at most 67108864"), "{err}");
        std::fs::write(&path, "listeners: []\n").unwrap();
        assert!(load(&path).is_ok());
    }
}
