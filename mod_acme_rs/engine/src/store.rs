//! The on-disk store (`ACMEStore`).
//!
//! ```text
//! <store>/                                   0700
//!   certificates/<name>.crt        -> ../live/<name>/fullchain.crt   (lego's paths, stable symlinks)
//!   certificates/<name>.key        -> ../live/<name>/privkey.key
//!   certificates/<name>.issuer.crt -> ../live/<name>/issuer.crt
//!   certificates/<name>.json       -> ../live/<name>/meta.json
//!   live/<name>                    -> ../archive/<name>/<NNNNNN>     (switched atomically)
//!   archive/<name>/<NNNNNN>/{fullchain.crt, privkey.key (0600), issuer.crt, meta.json}
//!   fallback/<name>.crt, fallback/<name>.key (0600)                  (self-signed, temporary)
//! ```
//!
//! # Crash safety of [`Store::install`]
//!
//! A certificate is four files, and renaming four files is not atomic as a set. So each set is
//! written, complete and fsynced, into a fresh directory `archive/<name>/<NNNNNN>/` (first under a
//! `.staging-*` name, renamed into place when complete), and the one thing that changes when a
//! certificate is replaced is the symlink `live/<name>`, swapped by `rename(2)` of a new symlink
//! over it, then the `live/` directory is fsynced. The four `certificates/` paths are symlinks
//! through `live/<name>` that never change once made, so at every instant — a SIGKILL or power
//! loss included — all four resolve to the same set: the old one or the new one.
//!
//! The `certificates/` links are made before the first switch (dangling until then, which
//! readers see as "no certificate yet"). If regular files are found there (lego's, or copied in
//! by hand), their current contents are first copied as a set into the archive and `live/<name>`
//! is pointed at that copy; only then is each file replaced by its link, so a reader sees the same
//! bytes before and after each replacement, even if the migration is cut short.
//!
//! A reader that opens the files one by one while an install runs may still see the old
//! certificate and the new key. mod_ssl reads them at (graceful) restart, which the module
//! triggers after the install has finished; [`Store::load`] resolves `live/<name>` once and
//! reads every file of that one set.
//!
//! The store has one writer (the module's engine); installs for one name are also serialized
//! with an `flock` on `archive/<name>/.lock`.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::certcheck::{self, CertificateInfo, CheckError};
use crate::keys::{KeyError, KeyType, PrivateKey};

/// Mode of the store directory and every directory in it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of private keys and account files.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of certificates and metadata (the store directory itself is 0700).
pub const PUBLIC_MODE: u32 = 0o644;
/// How many certificate sets are kept in `archive/<name>/` (the live one included).
pub const ARCHIVE_KEEP: usize = 5;

const SET_CHAIN: &str = "fullchain.crt";
const SET_KEY: &str = "privkey.key";
const SET_ISSUER: &str = "issuer.crt";
const SET_META: &str = "meta.json";

/// Errors of the store. Messages name the file and never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file system operation failed.
    #[error("could not {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A certificate name cannot be used as a file name.
    #[error("{0:?} cannot be used as a certificate name in the store")]
    BadName(String),
    /// Something in the store is not what it should be.
    #[error("the store is damaged: {0}")]
    Corrupt(String),
    /// A stored certificate cannot be read.
    #[error("stored certificate {name}: {source}")]
    Certificate {
        name: String,
        #[source]
        source: CheckError,
    },
    /// A stored key cannot be read, or a key could not be made.
    #[error("key for {name}: {source}")]
    Key {
        name: String,
        #[source]
        source: KeyError,
    },
    /// Metadata could not be written.
    #[error("could not encode the metadata of {name}: {reason}")]
    Meta { name: String, reason: String },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The store name of a certificate: its first domain, a leading `*` written as `_`.
pub fn cert_name(first_domain: &str) -> String {
    match first_domain.strip_prefix('*') {
        Some(rest) => format!("_{rest}"),
        None => first_domain.to_string(),
    }
}

fn check_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty()
        || name.starts_with('.')
        || name.contains(['/', '\0', '\\'])
        || name.len() > 200
    {
        return Err(StoreError::BadName(name.to_string()));
    }
    Ok(())
}

/// The lego-compatible paths of one certificate (what `SSLCertificateFile` etc. point at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// `certificates/<name>.crt`: leaf + intermediates.
    pub crt: PathBuf,
    /// `certificates/<name>.key`: private key, 0600.
    pub key: PathBuf,
    /// `certificates/<name>.issuer.crt`: intermediates.
    pub issuer: PathBuf,
    /// `certificates/<name>.json`: metadata.
    pub json: PathBuf,
}

/// Paths of a fallback (self-signed) certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackPaths {
    pub crt: PathBuf,
    pub key: PathBuf,
}

/// The metadata written next to a certificate (`<name>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateMeta {
    pub domains: Vec<String>,
    /// The ACME certificate URL (empty when not known, e.g. for an imported certificate).
    #[serde(default)]
    pub certificate_url: String,
    #[serde(with = "rfc3339_serde")]
    pub not_before: SystemTime,
    #[serde(with = "rfc3339_serde")]
    pub not_after: SystemTime,
    pub serial: String,
    pub issuer: String,
    pub key_type: KeyType,
}

impl CertificateMeta {
    /// Metadata from a checked certificate's facts and its ACME URL.
    pub fn new(info: &CertificateInfo, certificate_url: impl Into<String>) -> CertificateMeta {
        CertificateMeta {
            domains: info.domains.clone(),
            certificate_url: certificate_url.into(),
            not_before: info.not_before,
            not_after: info.not_after,
            serial: info.serial.clone(),
            issuer: info.issuer.clone(),
            key_type: info.key_type,
        }
    }
}

mod rfc3339_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let text = OffsetDateTime::from(*t)
            .format(&Rfc3339)
            .map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        let t = OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)?;
        Ok(t.into())
    }
}

/// A certificate as found in the store.
#[derive(Debug, Clone)]
pub struct StoredCertificate {
    pub name: String,
    /// Leaf + intermediates, PEM.
    pub chain_pem: String,
    /// Intermediates, PEM (empty if the set has none).
    pub issuer_pem: String,
    pub key: PrivateKey,
    pub meta: CertificateMeta,
    /// The archive directory the set was read from (`None` for files not yet migrated).
    pub set_dir: Option<PathBuf>,
}

/// The store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

fn ensure_dir(path: &Path, recursive: bool) -> Result<(), StoreError> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => {
            if md.mode() & 0o777 != DIR_MODE {
                fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))
                    .map_err(io_err("set the mode of", path))?;
            }
            Ok(())
        }
        Ok(_) => Err(StoreError::Corrupt(format!(
            "{} is not a directory",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(recursive)
            .mode(DIR_MODE)
            .create(path)
            .or_else(|e| {
                // Lost a race with another creator: fine if it is a directory now.
                if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(io_err("create directory", path)),
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// fsyncs a directory so that the entries created, renamed or removed in it are durable.
fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync directory", dir))
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_sibling(path: &Path, what: &str) -> PathBuf {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{file}.{what}.{}.{n}", std::process::id()))
}

/// Creates `path` with `bytes` and `mode` (from creation), writes and fsyncs it. Fails if it
/// exists.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("fsync", path))
}

/// Replaces `path` atomically with `bytes`: writes a temporary file in the same directory with
/// `mode` from creation, fsyncs it, renames it over `path` and fsyncs the directory. Readers see
/// the old content or the new, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = parent_of(path)?;
    let tmp = tmp_sibling(path, "tmp");
    let result = write_new(&tmp, bytes, mode)
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err("rename a temporary file to", path)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    fsync_dir(dir)
}

fn parent_of(path: &Path) -> Result<&Path, StoreError> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Ok(Path::new(".")),
        Some(p) => Ok(p),
        None => Err(StoreError::Corrupt(format!(
            "{} has no parent directory",
            path.display()
        ))),
    }
}

/// Points the symlink `link` at `target` atomically (new symlink renamed over the old entry).
/// The caller fsyncs the directory.
fn replace_symlink(link: &Path, target: &Path) -> Result<(), StoreError> {
    let tmp = tmp_sibling(link, "link");
    std::os::unix::fs::symlink(target, &tmp).map_err(io_err("create symlink", &tmp))?;
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("switch symlink", link)(e));
    }
    Ok(())
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

fn utf8(name: &str, path: &Path, bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes)
        .map_err(|_| StoreError::Corrupt(format!("{} ({name}) is not text", path.display())))
}

/// An exclusive `flock` held until dropped.
struct DirLock(#[allow(dead_code)] File);

fn lock(path: &Path) -> Result<DirLock, StoreError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(SECRET_MODE)
        .open(path)
        .map_err(io_err("open lock file", path))?;
    // SAFETY: flock on a valid open file descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_err("lock", path)(io::Error::last_os_error()));
    }
    Ok(DirLock(f))
}

fn set_id(entry: &str) -> Option<u64> {
    if !entry.is_empty() && entry.bytes().all(|b| b.is_ascii_digit()) {
        entry.parse().ok()
    } else {
        None
    }
}

impl Store {
    /// Opens the store at `root`, creating it and its directories (0700) when missing and
    /// tightening their modes when looser. Also finishes an interrupted migration of
    /// `certificates/` files to links (see the module documentation).
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let store = Store { root: root.into() };
        ensure_dir(&store.root, true)?;
        for sub in ["certificates", "live", "archive", "fallback"] {
            ensure_dir(&store.root.join(sub), false)?;
        }
        // Finish any migration that was cut short, so readers after startup see links only.
        for name in store.live_names()? {
            let _guard = store.lock_name(&name)?;
            store.ensure_links(&name)?;
        }
        Ok(store)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A directory of the store for another part of the module (accounts, state), created 0700.
    pub fn subdir(&self, rel: &str) -> Result<PathBuf, StoreError> {
        check_name(rel)?;
        let dir = self.root.join(rel);
        ensure_dir(&dir, false)?;
        Ok(dir)
    }

    /// Where the account for the CA at `directory_url` is kept: one file per directory URL, so
    /// switching ACMEServer never reuses (or overwrites) another CA's account.
    pub fn account_path(&self, directory_url: &str) -> Result<PathBuf, StoreError> {
        let file: String = directory_url
            .trim_start_matches("https://")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
            .collect();
        Ok(self.subdir("accounts")?.join(format!("{file}.json")))
    }

    /// The lego-compatible paths of certificate `name`.
    pub fn cert_paths(&self, name: &str) -> CertPaths {
        let dir = self.root.join("certificates");
        CertPaths {
            crt: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            issuer: dir.join(format!("{name}.issuer.crt")),
            json: dir.join(format!("{name}.json")),
        }
    }

    /// `archive/<name>`: every kept set of certificate `name`, one numbered directory each.
    pub fn archive_dir(&self, name: &str) -> PathBuf {
        self.root.join("archive").join(name)
    }

    /// `live/<name>`: the symlink to the set in use.
    pub fn live_link(&self, name: &str) -> PathBuf {
        self.root.join("live").join(name)
    }

    /// Paths of the fallback certificate of `name`.
    pub fn fallback_paths(&self, name: &str) -> FallbackPaths {
        let dir = self.root.join("fallback");
        FallbackPaths {
            crt: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }

    /// Names that have a live certificate set.
    pub fn live_names(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("live");
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The four (link, target) pairs of `name`; targets are relative to `certificates/`.
    fn links(&self, name: &str) -> [(PathBuf, PathBuf, &'static str, u32); 4] {
        let p = self.cert_paths(name);
        let live = Path::new("..").join("live").join(name);
        [
            (p.crt, live.join(SET_CHAIN), SET_CHAIN, PUBLIC_MODE),
            (p.key, live.join(SET_KEY), SET_KEY, SECRET_MODE),
            (p.issuer, live.join(SET_ISSUER), SET_ISSUER, PUBLIC_MODE),
            (p.json, live.join(SET_META), SET_META, PUBLIC_MODE),
        ]
    }

    fn lock_name(&self, name: &str) -> Result<DirLock, StoreError> {
        let dir = self.archive_dir(name);
        ensure_dir(&dir, false)?;
        lock(&dir.join(".lock"))
    }

    /// Reads certificate `name`: the set `live/<name>` points at, resolved once so that every
    /// file comes from the same set; or, before any install, lego-style regular files in
    /// `certificates/`. `Ok(None)` when there is no certificate.
    pub fn load(&self, name: &str) -> Result<Option<StoredCertificate>, StoreError> {
        check_name(name)?;
        let live = self.live_link(name);
        let (chain_p, key_p, issuer_p, meta_p, set_dir) = match fs::read_link(&live) {
            Ok(target) => {
                let set = live.parent().expect("live/ has a parent").join(target);
                let set = fs::canonicalize(&set).map_err(|e| {
                    StoreError::Corrupt(format!("{} points to a missing set: {e}", live.display()))
                })?;
                (
                    set.join(SET_CHAIN),
                    set.join(SET_KEY),
                    set.join(SET_ISSUER),
                    set.join(SET_META),
                    Some(set),
                )
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let p = self.cert_paths(name);
                (p.crt, p.key, p.issuer, p.json, None)
            }
            Err(e) => return Err(io_err("read symlink", &live)(e)),
        };
        let Some(chain) = read_opt(&chain_p)? else {
            return Ok(None);
        };
        let chain_pem = utf8("certificate", &chain_p, chain)?;
        let key_bytes = read_opt(&key_p)?
            .ok_or_else(|| StoreError::Corrupt(format!("{} is missing", key_p.display())))?;
        let key_pem = utf8("private key", &key_p, key_bytes)?;
        let key = PrivateKey::from_pem(&key_pem).map_err(|source| StoreError::Key {
            name: name.to_string(),
            source,
        })?;
        let issuer_pem = match read_opt(&issuer_p)? {
            Some(b) => utf8("issuer certificate", &issuer_p, b)?,
            None => String::new(),
        };
        let meta_json = read_opt(&meta_p)?;
        let meta = match meta_json
            .as_deref()
            .and_then(|j| serde_json::from_slice::<CertificateMeta>(j).ok())
        {
            Some(m) => m,
            None => {
                // Missing or foreign (lego) metadata: take what the certificate says.
                let info = certcheck::read_certificate_info(&chain_pem).map_err(|source| {
                    StoreError::Certificate {
                        name: name.to_string(),
                        source,
                    }
                })?;
                let url = meta_json
                    .as_deref()
                    .and_then(|j| serde_json::from_slice::<serde_json::Value>(j).ok())
                    .and_then(|v| {
                        v.get("certificate_url")
                            .or_else(|| v.get("certUrl"))
                            .and_then(|u| u.as_str().map(str::to_string))
                    })
                    .unwrap_or_default();
                CertificateMeta::new(&info, url)
            }
        };
        Ok(Some(StoredCertificate {
            name: name.to_string(),
            chain_pem,
            issuer_pem,
            key,
            meta,
            set_dir,
        }))
    }

    /// Installs a new certificate set for `name` (the chain is expected to have passed
    /// [`certcheck::check_certificate`]). Crash-safe: readers see the whole old set or the whole
    /// new one. Keeps the last [`ARCHIVE_KEEP`] sets in [`Store::archive_dir`].
    pub fn install(
        &self,
        name: &str,
        chain_pem: &str,
        key: &PrivateKey,
        meta: &CertificateMeta,
    ) -> Result<(), StoreError> {
        check_name(name)?;
        let chain =
            certcheck::parse_pem_chain(chain_pem).map_err(|source| StoreError::Certificate {
                name: name.to_string(),
                source,
            })?;
        let fullchain: String = chain
            .iter()
            .map(|c| crate::keys::pem_encode("CERTIFICATE", c))
            .collect();
        let issuer: String = chain[1..]
            .iter()
            .map(|c| crate::keys::pem_encode("CERTIFICATE", c))
            .collect();
        let mut meta_json = serde_json::to_vec_pretty(meta).map_err(|e| StoreError::Meta {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        meta_json.push(b'\n');
        let key_pem = key.to_pem();

        let _guard = self.lock_name(name)?;
        self.ensure_links(name)?;
        let set = self.write_set(
            name,
            &[
                (SET_CHAIN, fullchain.as_bytes(), PUBLIC_MODE),
                (SET_KEY, key_pem.as_bytes(), SECRET_MODE),
                (SET_ISSUER, issuer.as_bytes(), PUBLIC_MODE),
                (SET_META, &meta_json, PUBLIC_MODE),
            ],
        )?;
        self.switch_live(name, &set)?;
        // The new set is in place; failing to tidy the archive does not undo that.
        let _ = self.prune(name);
        Ok(())
    }

    /// Writes a complete set into a new `archive/<name>/<NNNNNN>` (through a staging directory,
    /// every file and the directory fsynced) and returns its path. Readers are not affected.
    fn write_set(&self, name: &str, files: &[(&str, &[u8], u32)]) -> Result<PathBuf, StoreError> {
        let archive = self.archive_dir(name);
        ensure_dir(&archive, false)?;
        let mut next = 0;
        for entry in fs::read_dir(&archive).map_err(io_err("list", &archive))? {
            let entry = entry.map_err(io_err("list", &archive))?;
            let fname = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = set_id(&fname) {
                next = next.max(id + 1);
            } else if fname.starts_with(".staging-") {
                // Left by an install that was killed: never referenced, remove it.
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let final_dir = archive.join(format!("{next:06}"));
        let staging = archive.join(format!(".staging-{next:06}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        DirBuilder::new()
            .mode(DIR_MODE)
            .create(&staging)
            .map_err(io_err("create directory", &staging))?;
        let written = (|| {
            for (file, bytes, mode) in files {
                write_new(&staging.join(file), bytes, *mode)?;
            }
            fsync_dir(&staging)?;
            fs::rename(&staging, &final_dir).map_err(io_err("rename into place", &final_dir))?;
            fsync_dir(&archive)
        })();
        if let Err(e) = written {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        Ok(final_dir)
    }

    /// Points `live/<name>` at `set` (an `archive/<name>/<NNNNNN>` directory) in one rename.
    fn switch_live(&self, name: &str, set: &Path) -> Result<(), StoreError> {
        let id = set
            .file_name()
            .ok_or_else(|| StoreError::Corrupt(format!("bad set directory {}", set.display())))?;
        let target = Path::new("..").join("archive").join(name).join(id);
        let live = self.live_link(name);
        replace_symlink(&live, &target)?;
        fsync_dir(parent_of(&live)?)
    }

    /// Makes the four `certificates/` entries of `name` the stable links through `live/<name>`.
    /// Entries that are anything else (regular files, other links) are first copied as a set
    /// into the archive and made live, so that replacing them changes no reader-visible byte.
    fn ensure_links(&self, name: &str) -> Result<(), StoreError> {
        let links = self.links(name);
        let mut missing = Vec::new();
        let mut foreign = false;
        for (link, target, _, _) in &links {
            match fs::symlink_metadata(link) {
                Ok(md) if md.file_type().is_symlink() => {
                    if fs::read_link(link).map_err(io_err("read symlink", link))? != *target {
                        foreign = true;
                    }
                }
                Ok(_) => foreign = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(link.clone()),
                Err(e) => return Err(io_err("inspect", link)(e)),
            }
        }
        if foreign {
            self.import_current(name)?;
        }
        if !foreign && missing.is_empty() {
            return Ok(());
        }
        for (link, target, _, _) in &links {
            let ours = fs::symlink_metadata(link).is_ok_and(|md| md.file_type().is_symlink())
                && fs::read_link(link).ok().as_deref() == Some(target.as_path());
            if !ours {
                replace_symlink(link, target)?;
            }
        }
        fsync_dir(&self.root.join("certificates"))
    }

    /// Copies what readers currently see at the four `certificates/` paths into a new archive
    /// set and makes it live.
    fn import_current(&self, name: &str) -> Result<PathBuf, StoreError> {
        let mut contents = Vec::new();
        for (link, _, file, mode) in self.links(name) {
            if let Some(bytes) = read_opt(&link)? {
                contents.push((file, bytes, mode));
            }
        }
        let files: Vec<(&str, &[u8], u32)> = contents
            .iter()
            .map(|(f, b, m)| (*f, b.as_slice(), *m))
            .collect();
        let set = self.write_set(name, &files)?;
        self.switch_live(name, &set)?;
        Ok(set)
    }

    /// Removes all but the newest [`ARCHIVE_KEEP`] sets, never the live one.
    fn prune(&self, name: &str) -> Result<(), StoreError> {
        let archive = self.archive_dir(name);
        let live_target = fs::read_link(self.live_link(name)).ok();
        let live_id = live_target
            .as_ref()
            .and_then(|t| t.file_name())
            .map(|f| f.to_string_lossy().into_owned());
        let mut ids: Vec<(u64, String)> = fs::read_dir(&archive)
            .map_err(io_err("list", &archive))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                set_id(&n).map(|id| (id, n))
            })
            .collect();
        ids.sort();
        let excess = ids.len().saturating_sub(ARCHIVE_KEEP);
        for (_, dir) in ids.into_iter().take(excess) {
            if Some(&dir) != live_id.as_ref() {
                let path = archive.join(&dir);
                fs::remove_dir_all(&path).map_err(io_err("remove old set", &path))?;
            }
        }
        fsync_dir(&archive)
    }

    /// Makes sure a usable self-signed fallback certificate for `domains` exists under
    /// `fallback/` (regenerated when missing, unreadable, mismatched, for other names, or with
    /// less than a day left) and returns its paths. The key is written before the certificate;
    /// a pair cut in half by a crash fails the check and is made anew on the next call.
    pub fn ensure_fallback(
        &self,
        name: &str,
        domains: &[String],
    ) -> Result<FallbackPaths, StoreError> {
        check_name(name)?;
        ensure_dir(&self.root.join("fallback"), false)?;
        let paths = self.fallback_paths(name);
        let existing = (|| {
            let crt = String::from_utf8(read_opt(&paths.crt).ok()??).ok()?;
            let key = String::from_utf8(read_opt(&paths.key).ok()??).ok()?;
            let key = PrivateKey::from_pem(&key).ok()?;
            Some((crt, key))
        })();
        if let Some((crt, key)) = existing {
            if certcheck::fallback_usable(
                &crt,
                &key,
                domains,
                SystemTime::now(),
                Duration::from_secs(24 * 3600),
            ) {
                return Ok(paths);
            }
        }
        let (crt, key) =
            certcheck::self_signed_fallback(domains).map_err(|source| StoreError::Key {
                name: name.to_string(),
                source,
            })?;
        write_atomic(&paths.key, key.to_pem().as_bytes(), SECRET_MODE)?;
        write_atomic(&paths.crt, crt.as_bytes(), PUBLIC_MODE)?;
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certcheck::tests::{names, TestCa};
    use crate::keys::generate_key;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o777
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap()
    }

    struct Issued {
        chain: String,
        key: PrivateKey,
        meta: CertificateMeta,
    }

    fn issue(ca: &TestCa, domains: &[String], url: &str) -> Issued {
        let key = generate_key(KeyType::EcP256).unwrap();
        let chain = ca.chain(&key, domains);
        let info = certcheck::check_certificate(&chain, &key, domains, SystemTime::now()).unwrap();
        Issued {
            chain,
            key,
            meta: CertificateMeta::new(&info, url),
        }
    }

    /// What a reader sees through the lego paths, plus a consistency check of the set.
    fn assert_reader_sees(store: &Store, name: &str, want: &Issued) {
        let p = store.cert_paths(name);
        assert_eq!(read(&p.crt), want.chain, "crt");
        assert_eq!(
            PrivateKey::from_pem(&read(&p.key)).unwrap(),
            want.key,
            "key"
        );
        let meta: CertificateMeta = serde_json::from_str(&read(&p.json)).unwrap();
        assert_eq!(meta, want.meta, "json");
        let loaded = store.load(name).unwrap().unwrap();
        assert_eq!(loaded.chain_pem, want.chain);
        assert_eq!(loaded.key, want.key);
        assert_eq!(loaded.meta, want.meta);
        assert_eq!(read(&p.issuer), loaded.issuer_pem);
        // The files of one set belong together.
        certcheck::check_certificate(
            &read(&p.crt),
            &PrivateKey::from_pem(&read(&p.key)).unwrap(),
            &meta.domains,
            SystemTime::now(),
        )
        .unwrap();
    }

    fn set_dirs(store: &Store, name: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(store.archive_dir(name))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| set_id(n).is_some())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn cert_names() {
        assert_eq!(cert_name("*.example.test"), "_.example.test");
        assert_eq!(cert_name("example.test"), "example.test");
        assert!(check_name("../x").is_err());
        assert!(check_name("").is_err());
        assert!(check_name(".hidden").is_err());
        assert!(check_name("_.example.test").is_ok());
    }

    #[test]
    fn open_creates_private_dirs_and_fixes_loose_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("a/b/store");
        let store = Store::open(&root).unwrap();
        for d in ["", "certificates", "live", "archive", "fallback"] {
            assert_eq!(mode(&root.join(d)), 0o700, "{d}");
        }
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(root.join("certificates"), fs::Permissions::from_mode(0o777)).unwrap();
        Store::open(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("certificates")), 0o700);
        let acc = store.subdir("accounts").unwrap();
        assert_eq!(mode(&acc), 0o700);
        assert!(store.load("example.test").unwrap().is_none());
    }

    #[test]
    fn install_writes_the_four_files_and_a_second_install_switches_them_together() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let ca = TestCa::new("A");
        let domains = names(&["*.example.test", "example.test"]);
        let name = cert_name(&domains[0]);
        let first = issue(&ca, &domains, "https://ca.test/cert/1");
        store
            .install(&name, &first.chain, &first.key, &first.meta)
            .unwrap();

        let p = store.cert_paths(&name);
        assert!(p.crt.ends_with("certificates/_.example.test.crt"));
        assert_eq!(mode(&p.key), 0o600);
        assert_eq!(read(&p.issuer), ca.inter_pem);
        assert_reader_sees(&store, &name, &first);
        let json: serde_json::Value = serde_json::from_str(&read(&p.json)).unwrap();
        assert_eq!(json["domains"], serde_json::json!(domains));
        assert_eq!(json["certificate_url"], "https://ca.test/cert/1");
        assert_eq!(json["key_type"], "ec256");
        let nb = json["not_before"].as_str().unwrap();
        time::OffsetDateTime::parse(nb, &time::format_description::well_known::Rfc3339).unwrap();
        for d in ["archive", "live"] {
            assert_eq!(mode(&store.root().join(d)), 0o700);
        }
        assert_eq!(mode(&store.archive_dir(&name)), 0o700);
        assert_eq!(set_dirs(&store, &name), vec!["000000"]);
        assert_eq!(mode(&store.archive_dir(&name).join("000000")), 0o700);

        let second = issue(&ca, &domains, "https://ca.test/cert/2");
        store
            .install(&name, &second.chain, &second.key, &second.meta)
            .unwrap();
        assert_reader_sees(&store, &name, &second);
        assert_eq!(mode(&p.key), 0o600);
        // The old set is kept, whole.
        assert_eq!(set_dirs(&store, &name), vec!["000000", "000001"]);
        let old = store.archive_dir(&name).join("000000");
        assert_eq!(read(&old.join(SET_CHAIN)), first.chain);
        assert_eq!(
            PrivateKey::from_pem(&read(&old.join(SET_KEY))).unwrap(),
            first.key
        );

        // Only the last ARCHIVE_KEEP sets are kept.
        let mut last = second;
        for i in 0..6 {
            last = issue(&ca, &domains, &format!("https://ca.test/cert/x{i}"));
            store
                .install(&name, &last.chain, &last.key, &last.meta)
                .unwrap();
        }
        assert_eq!(
            set_dirs(&store, &name),
            vec!["000003", "000004", "000005", "000006", "000007"]
        );
        assert_reader_sees(&store, &name, &last);
        assert_eq!(store.live_names().unwrap(), vec![name.clone()]);
        // No temporary files anywhere.
        for d in ["certificates", "live"] {
            for e in fs::read_dir(store.root().join(d)).unwrap() {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(!n.starts_with('.'), "{d}/{n}");
            }
        }
    }

    #[test]
    fn a_killed_install_leaves_the_old_set_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let ca = TestCa::new("A");
        let domains = names(&["example.test"]);
        let name = cert_name(&domains[0]);
        let old = issue(&ca, &domains, "https://ca.test/cert/old");
        store
            .install(&name, &old.chain, &old.key, &old.meta)
            .unwrap();

        let new = issue(&ca, &domains, "https://ca.test/cert/new");
        // Killed while writing: a staging directory with half of the new files.
        let staging = store.archive_dir(&name).join(".staging-000001-99999");
        DirBuilder::new().mode(0o700).create(&staging).unwrap();
        fs::write(staging.join(SET_CHAIN), &new.chain).unwrap();
        fs::write(staging.join(SET_KEY), &new.key.to_pem()[..40]).unwrap();
        assert_reader_sees(&store, &name, &old);

        // Killed after the new set was complete but before the switch.
        let set = store
            .write_set(
                &name,
                &[
                    (SET_CHAIN, new.chain.as_bytes(), PUBLIC_MODE),
                    (SET_KEY, new.key.to_pem().as_bytes(), SECRET_MODE),
                ],
            )
            .unwrap();
        assert!(set.exists());
        assert_reader_sees(&store, &name, &old);
        // A restart (open) does not change what readers see either.
        let store = Store::open(store.root()).unwrap();
        assert_reader_sees(&store, &name, &old);

        // A stray temporary live link (killed between symlink and rename) is harmless.
        std::os::unix::fs::symlink(
            Path::new("../archive").join(&name).join("000002"),
            store.root().join("live").join(format!(".{name}.link.1.1")),
        )
        .unwrap();
        assert_reader_sees(&store, &name, &old);

        // The next install completes, and tidies the staging leftovers.
        store
            .install(&name, &new.chain, &new.key, &new.meta)
            .unwrap();
        assert_reader_sees(&store, &name, &new);
        assert!(!staging.exists());
    }

    #[test]
    fn install_fails_cleanly_and_keeps_the_old_set() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let ca = TestCa::new("A");
        let domains = names(&["example.test"]);
        let old = issue(&ca, &domains, "u");
        store
            .install("example.test", &old.chain, &old.key, &old.meta)
            .unwrap();
        let err = store
            .install("example.test", "not pem", &old.key, &old.meta)
            .unwrap_err();
        assert!(
            err.to_string().contains("no certificate in the PEM data"),
            "{err}"
        );
        assert!(matches!(
            store.install("../x", &old.chain, &old.key, &old.meta),
            Err(StoreError::BadName(_))
        ));
        assert_reader_sees(&store, "example.test", &old);
    }

    #[test]
    fn lego_files_are_migrated_without_a_mixed_moment() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let ca = TestCa::new("A");
        let domains = names(&["example.test", "www.example.test"]);
        let name = "example.test";
        let lego = issue(&ca, &domains, "");
        let p = store.cert_paths(name);
        // lego's files: regular files and its own JSON format.
        write_atomic(&p.crt, lego.chain.as_bytes(), 0o600).unwrap();
        write_atomic(&p.key, lego.key.to_pem().as_bytes(), 0o600).unwrap();
        write_atomic(&p.issuer, ca.inter_pem.as_bytes(), 0o600).unwrap();
        write_atomic(
            &p.json,
            br#"{"domain":"example.test","certUrl":"https://lego/cert/1"}"#,
            0o600,
        )
        .unwrap();
        let loaded = store.load(name).unwrap().unwrap();
        assert_eq!(loaded.meta.certificate_url, "https://lego/cert/1");
        assert_eq!(loaded.meta.domains, domains);
        assert!(loaded.set_dir.is_none());

        // Killed in the middle of the migration: the import is live, one file is a link.
        store.import_current(name).unwrap();
        let target = Path::new("../live").join(name).join(SET_CHAIN);
        replace_symlink(&p.crt, &target).unwrap();
        assert_eq!(read(&p.crt), lego.chain);
        assert_eq!(PrivateKey::from_pem(&read(&p.key)).unwrap(), lego.key);
        // open() finishes it.
        let store = Store::open(store.root()).unwrap();
        for link in [&p.crt, &p.key, &p.issuer, &p.json] {
            assert!(fs::symlink_metadata(link).unwrap().file_type().is_symlink());
        }
        assert_eq!(read(&p.crt), lego.chain);
        assert_eq!(mode(&p.key), 0o600);
        let loaded = store.load(name).unwrap().unwrap();
        assert_eq!(loaded.meta.certificate_url, "https://lego/cert/1");
        assert!(loaded.set_dir.is_some());

        let new = issue(&ca, &domains, "https://ca.test/cert/2");
        store
            .install(name, &new.chain, &new.key, &new.meta)
            .unwrap();
        assert_reader_sees(&store, name, &new);
    }

    #[test]
    fn fallback_is_made_once_and_remade_when_broken() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let domains = names(&["*.example.test", "example.test"]);
        let name = cert_name(&domains[0]);
        let paths = store.ensure_fallback(&name, &domains).unwrap();
        assert_eq!(paths, store.fallback_paths(&name));
        assert_eq!(mode(&paths.key), 0o600);
        let crt = read(&paths.crt);
        let key = PrivateKey::from_pem(&read(&paths.key)).unwrap();
        assert!(certcheck::fallback_usable(
            &crt,
            &key,
            &domains,
            SystemTime::now(),
            Duration::ZERO
        ));

        // Still good: not regenerated.
        store.ensure_fallback(&name, &domains).unwrap();
        assert_eq!(read(&paths.crt), crt);

        // Half-replaced pair (crash between the two writes): regenerated, matching again.
        let other = generate_key(KeyType::EcP256).unwrap();
        write_atomic(&paths.key, other.to_pem().as_bytes(), SECRET_MODE).unwrap();
        store.ensure_fallback(&name, &domains).unwrap();
        let crt2 = read(&paths.crt);
        assert_ne!(crt2, crt);
        let key2 = PrivateKey::from_pem(&read(&paths.key)).unwrap();
        assert!(certcheck::fallback_usable(
            &crt2,
            &key2,
            &domains,
            SystemTime::now(),
            Duration::ZERO
        ));

        // Other names: regenerated.
        let more = names(&["*.example.test", "example.test", "x.test"]);
        store.ensure_fallback(&name, &more).unwrap();
        let info = certcheck::read_certificate_info(&read(&paths.crt)).unwrap();
        assert_eq!(info.domains, more);
    }

    #[test]
    fn write_atomic_sets_the_mode_from_creation_and_replaces_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("account.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(read(&path), "one");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(read(&path), "two");
        let entries: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "no temporary file left");
        let err = write_atomic(&tmp.path().join("nodir/x"), b"x", 0o600).unwrap_err();
        assert!(err.to_string().contains("nodir"), "{err}");
    }

    /// Not a test by itself: the child process of `sigkill_during_installs_never_mixes_sets`,
    /// installing new sets in a loop until it is killed.
    #[test]
    #[ignore]
    fn install_loop_child() {
        let Some(root) = std::env::var_os("ACME_RS_STORE_CHILD_ROOT") else {
            return;
        };
        let store = Store::open(PathBuf::from(root)).unwrap();
        let ca = TestCa::new("A");
        let domains = names(&["example.test"]);
        let sets: Vec<Issued> = (0..4)
            .map(|i| issue(&ca, &domains, &i.to_string()))
            .collect();
        for i in 0.. {
            let s = &sets[i % sets.len()];
            store
                .install("example.test", &s.chain, &s.key, &s.meta)
                .unwrap();
        }
    }

    #[test]
    fn sigkill_during_installs_never_mixes_sets() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("store");
        let store = Store::open(&root).unwrap();
        let ca = TestCa::new("A");
        let domains = names(&["example.test"]);
        let first = issue(&ca, &domains, "first");
        store
            .install("example.test", &first.chain, &first.key, &first.meta)
            .unwrap();
        let exe = std::env::current_exe().unwrap();
        let p = store.cert_paths("example.test");
        let mut installs_seen = std::collections::BTreeSet::new();
        for round in 0..8u64 {
            let mut child = std::process::Command::new(&exe)
                .args([
                    "--ignored",
                    "--exact",
                    "store::tests::install_loop_child",
                    "--nocapture",
                ])
                .env("ACME_RS_STORE_CHILD_ROOT", &root)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Let it get going (key generation first), then kill it at a varying instant.
            std::thread::sleep(Duration::from_millis(150 + 37 * round));
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
            child.wait().unwrap();
            // Whatever instant it died at, the four paths show one whole set.
            let crt = read(&p.crt);
            let key = PrivateKey::from_pem(&read(&p.key)).unwrap();
            let meta: CertificateMeta = serde_json::from_str(&read(&p.json)).unwrap();
            let info = certcheck::check_certificate(&crt, &key, &domains, SystemTime::now())
                .unwrap_or_else(|e| panic!("round {round}: mixed set: {e}"));
            assert_eq!(
                info.serial, meta.serial,
                "round {round}: json from another set"
            );
            assert!(
                crt.ends_with(&read(&p.issuer)),
                "round {round}: issuer from another set"
            );
            let loaded = Store::open(&root)
                .unwrap()
                .load("example.test")
                .unwrap()
                .unwrap();
            assert_eq!(loaded.chain_pem, crt);
            installs_seen.insert(set_dirs(&store, "example.test").last().cloned());
        }
        // The child did install things (the kills did not all land before its first install).
        assert!(installs_seen.len() > 1, "{installs_seen:?}");
    }
}
