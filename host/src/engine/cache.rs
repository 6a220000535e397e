//! The on-disk cache of compiled components.
//!
//! Entries are named by the sha256 of the component's bytes and a hash of the
//! engine's compatibility settings, so a changed component or a new wasmtime
//! never loads a stale artifact. The directory is host-only: it is created
//! with mode 0700 and refused if another user can write to it, because a
//! compiled artifact is native code that is loaded without verification.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;

/// Why the compile cache cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The directory could not be created or inspected.
    #[error("compile cache directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The directory is writable by, or belongs to, another user.
    #[error(
        "compile cache directory {0} belongs to or is writable by another user; compiled code \
         loaded from it would be trusted, so Loom refuses it. Run `chmod 700` on a directory you \
         own, or choose another data_dir"
    )]
    Insecure(PathBuf),
}

/// Whether a component came from the cache or was compiled now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Loaded from a cached artifact.
    Hit,
    /// Compiled and stored.
    Compiled,
}

/// A content-addressed cache of precompiled components.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

/// Feeds `Hash` output into sha256, for a hash that is stable across processes.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl CompileCache {
    /// Open (creating if needed) the cache in `dir` for `engine`.
    ///
    /// # Errors
    ///
    /// [`CacheError`] when the directory cannot be created or is insecure.
    pub fn open(dir: &Path, engine: &wasmtime::Engine) -> Result<Self, CacheError> {
        let io = |source| CacheError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(dir).map_err(io)?;
            let mode = meta.permissions().mode();
            if mode & 0o022 != 0 {
                if mode & 0o777 == 0o755 || mode & 0o777 == 0o775 || mode & 0o777 == 0o777 {
                    // Freshly created with a permissive umask: tighten it.
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                        .map_err(io)?;
                }
                let mode = std::fs::metadata(dir).map_err(io)?.permissions().mode();
                if mode & 0o022 != 0 {
                    return Err(CacheError::Insecure(dir.to_owned()));
                }
            }
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::MetadataExt;
            let owner = std::fs::metadata(dir).map_err(io)?.uid();
            if let Ok(me) = std::fs::metadata("/proc/self")
                && me.uid() != owner
            {
                return Err(CacheError::Insecure(dir.to_owned()));
            }
        }
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..8]);
        Ok(CompileCache {
            dir: dir.to_owned(),
            engine_key,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// Load the compiled form of `bytes` (whose sha256 is `sha256`), compiling
    /// and storing it on a miss. A corrupt entry is replaced.
    ///
    /// # Errors
    ///
    /// The compiler's error when `bytes` is not a valid component.
    pub fn load_or_compile(
        &self,
        engine: &wasmtime::Engine,
        bytes: &[u8],
        sha256: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let path = self.entry(sha256);
        if path.is_file() {
            // SAFETY: the file is in the host-only cache directory checked in
            // `open`, named by the content hash of the source and the engine's
            // compatibility hash, and was written by `precompile_component`
            // below. wasmtime also checks the artifact's header and engine
            // compatibility before use.
            #[allow(unsafe_code, reason = "loading our own precompiled artifact")]
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "discarding unusable compile cache entry");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        let tmp = self
            .dir
            .join(format!(".{sha256}.{}.tmp", std::process::id()));
        let stored = std::fs::write(&tmp, &compiled).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(error) = stored {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(dir = %self.dir.display(), %error, "cannot write compile cache entry; continuing uncached");
        }
        // SAFETY: `compiled` was produced by `precompile_component` of this
        // same engine a moment ago and never left this process.
        #[allow(unsafe_code, reason = "loading an artifact this engine just produced")]
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, CacheOutcome::Compiled))
    }
}
