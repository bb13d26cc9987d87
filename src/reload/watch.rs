//! Certificates that rotate themselves: a TLS block with `watch: true` is reloaded when one of
//! its files changes on disk, without a SIGHUP. The [`Reloader`] does the reloading, all or
//! nothing, exactly as for SIGHUP; this module only decides *when*, and *which* blocks.
//!
//! How files change in practice decides the design:
//! - cert-manager / kubelet mount a Secret as a folder whose files are symlinks through
//!   `..data`, itself a symlink swapped by `rename(2)` to a fresh `..<timestamp>` folder;
//! - certbot points `live/<name>/*.pem` at `archive/<name>/*N.pem` and replaces the links;
//! - other ACME hooks write in place, or write a new file and rename it over the old one.
//!
//! A watch on a file follows its inode and goes deaf when a rename replaces it, so the
//! *folders* are watched instead (inotify through the `notify` crate, not recursive): the
//! folder of each named file, and the folder of every symlink met on the way to the real
//! file and of the real file itself. Events are kept only when they name a path on that way
//! (so a busy log file next to the certificates wakes nothing), and the way is walked again
//! after every batch, because a swap moves it.
//!
//! A batch ends after [`QUIET`] without a relevant event (a certificate and its key written
//! one after the other land in one batch), or [`MAX_DELAY`] after its first event if writes
//! never stop. Then every watched block's files are hashed; a block whose bytes differ from
//! the last attempt is reloaded, together with the others that changed, all or nothing.
//! A failed attempt (a key that does not match yet) is logged and counted, the old material
//! stays, and the next change to those files tries again; unchanged bytes never retry, so a
//! broken file is reported once, not on every unrelated event in its folder.
//!
//! When the watch begins, the files are compared with the [`Baseline`] hashed before the
//! material was read: a file replaced in between (while an upgrade's new process waits for
//! the old one's sockets) is a change like any other.
//!
//! A block without `watch` is never reloaded by this module, even when a watched block's
//! files change: its files are re-read on SIGHUP only.
//!
//! The watcher is a Pingora background service: it starts with the server (after
//! daemonizing, in the new process of a graceful upgrade) and stops at shutdown, dropping
//! its inotify instance and thread. No polling: it sleeps until the kernel reports a change.

use super::{Block, Reloader, Trigger};
use crate::config::Config;
use crate::metrics::Metrics;
use async_trait::async_trait;
use boring::hash::{Hasher, MessageDigest};
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How long the files must stay quiet before a batch of changes is looked at: long enough
/// for a hook writing a certificate and then its key, short enough to go unnoticed.
pub const QUIET: Duration = Duration::from_millis(300);

/// The longest a batch waits for quiet: files that keep changing are still looked at.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Symlinks followed on the way to one file (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;

/// Bytes of one file hashed to tell whether it changed (certificates are a few KiB).
const MAX_HASHED: u64 = 64 << 20;

/// One watched block and the files it names (absolute).
struct Watched {
    block: Block,
    path: String,
    files: Vec<PathBuf>,
}

/// What the files of one block held when last looked at: each file's SHA-256, or why it
/// could not be read.
type Fingerprint = Vec<Result<Vec<u8>, String>>;

/// The watched files as they were when the configuration's TLS material was read: what the
/// watcher compares with when it starts, so a file replaced between the loading and the
/// start of the watch (during a graceful upgrade the new process reads its files, then waits
/// for the old one's sockets) is still reloaded.
///
/// Taken *before* the material is read: a change in between then reloads identical material
/// once, where the other order would miss it.
#[derive(Debug, Default, Clone)]
pub struct Baseline(Vec<(Block, Fingerprint)>);

impl Baseline {
    /// Hashes the files of every block of `config` with `watch: true`.
    pub fn take(config: &Config) -> Baseline {
        Baseline(
            watched_files(config)
                .into_iter()
                .map(|(block, files)| (block, files.iter().map(|f| hash_file(f)).collect()))
                .collect(),
        )
    }

    fn of(&self, block: Block) -> Option<&Fingerprint> {
        self.0.iter().find(|(b, _)| *b == block).map(|(_, f)| f)
    }
}

/// Watches the files of every TLS block with `watch: true` and reloads a block when they
/// change (see the module documentation).
pub struct FileWatcher {
    reloader: Arc<Reloader>,
    blocks: Vec<Watched>,
    metrics: Arc<Metrics>,
    baseline: Baseline,
}

impl FileWatcher {
    /// A watcher for the blocks of `reloader`'s configuration that have `watch: true`;
    /// `None` when there are none (then no inotify instance is made at all). `baseline` is
    /// [`Baseline::take`] of that configuration, taken before its material was read (an
    /// empty one reloads every watched block once when the watch begins).
    pub fn new(
        reloader: Arc<Reloader>,
        metrics: Arc<Metrics>,
        baseline: Baseline,
    ) -> Option<FileWatcher> {
        let blocks: Vec<Watched> = watched_files(reloader.config())
            .into_iter()
            .map(|(block, files)| Watched {
                block,
                path: reloader.block_path(block),
                // The process may change its working folder (`--daemon`); inotify reports
                // absolute paths, which these must compare equal to.
                files: files
                    .into_iter()
                    .map(|f| std::path::absolute(&f).unwrap_or(f))
                    .collect(),
            })
            .collect();
        if blocks.is_empty() {
            return None;
        }
        Some(FileWatcher {
            reloader,
            blocks,
            metrics,
            baseline,
        })
    }

    /// The key paths of the watched blocks (`listeners[0].tls`, …).
    pub fn blocks(&self) -> Vec<&str> {
        self.blocks.iter().map(|w| w.path.as_str()).collect()
    }

    fn fingerprints(&self) -> Vec<Fingerprint> {
        self.blocks
            .iter()
            .map(|w| w.files.iter().map(|f| hash_file(f)).collect())
            .collect()
    }

    /// Every file of every watched block, for the walk along symlinks.
    fn all_files(&self) -> impl Iterator<Item = &Path> {
        self.blocks
            .iter()
            .flat_map(|w| w.files.iter().map(PathBuf::as_path))
    }
}

/// The files each TLS block with `watch: true` names, in configuration order.
pub fn watched_files(config: &Config) -> Vec<(Block, Vec<PathBuf>)> {
    let mut out = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let Some(t) = l.tls.as_ref().filter(|t| t.watch) else {
            continue;
        };
        let mut files = vec![t.default_cert.cert.clone(), t.default_cert.key.clone()];
        for s in &t.sni_certs {
            files.extend([s.files.cert.clone(), s.files.key.clone()]);
        }
        files.extend(t.client_ca.clone());
        out.push((Block::Listener(i), files));
    }
    for (i, u) in config.upstreams.iter().enumerate() {
        let Some(t) = u.tls.as_ref().filter(|t| t.watch) else {
            continue;
        };
        let mut files: Vec<PathBuf> = t.ca.iter().cloned().collect();
        if let Some(c) = &t.client {
            files.extend([c.cert.clone(), c.key.clone()]);
        }
        if !files.is_empty() {
            out.push((Block::Upstream(i), files));
        }
    }
    out
}

#[async_trait]
impl BackgroundService for FileWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let wake = Arc::new(Notify::new());
        let relevant = Arc::new(Mutex::new(HashSet::new()));
        let handler = {
            let (wake, relevant) = (wake.clone(), relevant.clone());
            move |event: notify::Result<notify::Event>| {
                if wakes(&event, &relevant) {
                    wake.notify_one();
                }
            }
        };
        let mut fs = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                log::error!(target: "gatehouse::reload", "cannot watch certificate files, `watch: true` is off (SIGHUP still reloads): {e}");
                return;
            }
        };
        let mut folders = Folders::default();
        folders.sync(&mut fs, self.all_files(), &relevant);
        self.metrics.tls_watched_folders.set(folders.len());
        // What was read at load, not what is there now: a file replaced since then is a
        // change (a block missing from the baseline counts as changed).
        let mut last: Vec<Fingerprint> = self
            .blocks
            .iter()
            .map(|w| self.baseline.of(w.block).cloned().unwrap_or_default())
            .collect();
        // Blocks of a refused batch: all or nothing kept their new files out too, so they are
        // tried again with the next change to any watched block (not on every event: a broken
        // file is reported once).
        let mut pending: Vec<usize> = Vec::new();
        log::info!(
            target: "gatehouse::reload",
            "watching the files of {} in {} folder(s): a change reloads that block",
            self.blocks().join(", "),
            folders.len()
        );
        if self.fingerprints() != last {
            wake.notify_one();
        }
        loop {
            tokio::select! {
                _ = wake.notified() => {}
                _ = shutdown.changed() => break,
            }
            if !settle(&wake, &mut shutdown).await {
                break;
            }
            // A swap moves the way to the files: walk it again before looking at them.
            folders.sync(&mut fs, self.all_files(), &relevant);
            self.metrics.tls_watched_folders.set(folders.len());
            let now = self.fingerprints();
            let changed: Vec<usize> = (0..self.blocks.len())
                .filter(|&i| now[i] != last[i])
                .collect();
            if changed.is_empty() {
                continue;
            }
            let mut todo = changed.clone();
            todo.extend(pending.drain(..).filter(|i| !changed.contains(i)));
            todo.sort_unstable();
            let blocks: Vec<Block> = todo.iter().map(|&i| self.blocks[i].block).collect();
            let names: Vec<&str> = todo.iter().map(|&i| self.blocks[i].path.as_str()).collect();
            log::info!(target: "gatehouse::reload", "files of {} changed: reloading", names.join(", "));
            // What was tried is remembered whatever the outcome: a broken file is reported
            // once, and the next write to it tries again.
            for i in changed {
                last[i] = now[i].clone();
            }
            if !self.reloader.run(Trigger::Watch(&blocks)) {
                pending = todo;
            }
        }
        self.metrics.tls_watched_folders.set(0);
    }
}

/// Waits until no wake-up came for [`QUIET`], or [`MAX_DELAY`] passed; false on shutdown.
async fn settle(wake: &Notify, shutdown: &mut ShutdownWatch) -> bool {
    let give_up = tokio::time::Instant::now() + MAX_DELAY;
    loop {
        tokio::select! {
            _ = wake.notified() => continue,
            _ = tokio::time::sleep(QUIET) => return true,
            _ = tokio::time::sleep_until(give_up) => return true,
            _ = shutdown.changed() => return false,
        }
    }
}

/// Whether an inotify event may concern a watched file: it names a path on the way to one
/// (and is not a mere read: Gatehouse's own reads of the files must not wake it). Errors
/// and overflows wake it too: the hashes then decide.
fn wakes(event: &notify::Result<notify::Event>, relevant: &Mutex<HashSet<PathBuf>>) -> bool {
    let e = match event {
        Ok(e) => e,
        Err(err) => {
            log::warn!(target: "gatehouse::reload", "certificate file watch: {err}");
            return true;
        }
    };
    match e.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    if e.need_rescan() || e.paths.is_empty() {
        return true;
    }
    let relevant = relevant.lock().unwrap_or_else(|p| p.into_inner());
    e.paths.iter().any(|p| relevant.contains(p))
}

/// The folders being watched, each with the identity (device, inode) it had when the watch
/// was added: a folder renamed away keeps its watch (inotify follows the inode), so one
/// whose path now names another folder is watched again.
#[derive(Default)]
struct Folders(BTreeMap<PathBuf, (u64, u64)>);

impl Folders {
    fn len(&self) -> i64 {
        i64::try_from(self.0.len()).unwrap_or(i64::MAX)
    }

    /// Walks the way to every file, publishes the paths on it as relevant, and makes the
    /// watched folders those it needs.
    fn sync<'a>(
        &mut self,
        fs: &mut impl notify::Watcher,
        files: impl Iterator<Item = &'a Path>,
        relevant: &Mutex<HashSet<PathBuf>>,
    ) {
        let mut paths = HashSet::new();
        let mut want = BTreeSet::new();
        for f in files {
            let way = walk(f);
            for dir in way.folders() {
                want.insert(existing_ancestor(&dir));
            }
            paths.extend(way.visited);
        }
        *relevant.lock().unwrap_or_else(|p| p.into_inner()) = paths;
        let stale: Vec<PathBuf> = self
            .0
            .iter()
            .filter(|(dir, id)| !want.contains(*dir) || identity(dir) != Some(**id))
            .map(|(dir, _)| dir.clone())
            .collect();
        for dir in stale {
            // notify already forgot a deleted folder; nothing to undo then.
            let _ = fs.unwatch(&dir);
            self.0.remove(&dir);
        }
        for dir in want {
            if self.0.contains_key(&dir) {
                continue;
            }
            let Some(id) = identity(&dir) else { continue };
            match fs.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.0.insert(dir, id);
                }
                Err(e) => log::error!(
                    target: "gatehouse::reload",
                    "cannot watch {} for certificate changes (SIGHUP still reloads): {e}",
                    dir.display()
                ),
            }
        }
    }
}

/// A folder's (device, inode), if it is one.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(dir).ok()?;
    m.is_dir().then(|| (m.dev(), m.ino()))
}

/// `dir` if it exists, else its nearest ancestor that does: a folder that is gone (renamed
/// away mid-swap) is waited for from above.
fn existing_ancestor(dir: &Path) -> PathBuf {
    let mut d = dir;
    loop {
        if identity(d).is_some() {
            return d.to_path_buf();
        }
        match d.parent() {
            Some(p) => d = p,
            None => return PathBuf::from("/"),
        }
    }
}

/// The way the kernel goes to open a file.
#[derive(Debug, Default, PartialEq)]
struct Way {
    /// Every path looked up on the way: each prefix, each symlink, each place one points to.
    visited: Vec<PathBuf>,
    /// The symlinks met.
    links: Vec<PathBuf>,
    /// Where the way ends (the real file, or where it would be).
    end: PathBuf,
}

impl Way {
    /// The folders holding a symlink of the way or its end: where a change to the file shows.
    fn folders(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.links
            .iter()
            .chain(std::iter::once(&self.end))
            .filter_map(|p| p.parent().map(Path::to_path_buf))
    }
}

enum Step {
    Root,
    Up,
    Name(OsString),
}

fn steps(p: &Path) -> impl Iterator<Item = Step> + '_ {
    p.components().filter_map(|c| match c {
        Component::RootDir | Component::Prefix(_) => Some(Step::Root),
        Component::CurDir => None,
        Component::ParentDir => Some(Step::Up),
        Component::Normal(n) => Some(Step::Name(n.to_os_string())),
    })
}

/// Follows `path` (absolute) one name at a time, symlinks included, as `open(2)` would; at
/// most [`MAX_SYMLINKS`] links, and a missing name simply ends in a path that does not exist.
fn walk(path: &Path) -> Way {
    let mut way = Way::default();
    let mut at = PathBuf::from("/");
    let mut todo: VecDeque<Step> = steps(path).collect();
    while let Some(step) = todo.pop_front() {
        match step {
            Step::Root => at = PathBuf::from("/"),
            Step::Up => {
                at.pop();
            }
            Step::Name(n) => {
                let next = at.join(n);
                way.visited.push(next.clone());
                match std::fs::read_link(&next) {
                    Ok(target) if way.links.len() < MAX_SYMLINKS => {
                        way.links.push(next);
                        for s in steps(&target).collect::<Vec<_>>().into_iter().rev() {
                            todo.push_front(s);
                        }
                    }
                    _ => at = next,
                }
            }
        }
    }
    way.end = at;
    way
}

/// The SHA-256 of a file's first [`MAX_HASHED`] bytes, or why it cannot be read.
fn hash_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| e.kind().to_string())?
        .take(MAX_HASHED);
    let mut h = Hasher::new(MessageDigest::sha256()).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 8192];
    loop {
        let n = f.read(&mut buf).map_err(|e| e.kind().to_string())?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]).map_err(|e| e.to_string())?;
    }
    Ok(h.finish().map_err(|e| e.to_string())?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A Kubernetes Secret volume: files are links through `..data`, a link to the current
    /// timestamped folder. The way to `tls.crt` passes both links and ends in that folder.
    #[test]
    fn the_way_through_a_secret_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(d.join("..2026_01")).unwrap();
        std::fs::write(d.join("..2026_01/tls.crt"), "x").unwrap();
        symlink("..2026_01", d.join("..data")).unwrap();
        symlink("..data/tls.crt", d.join("tls.crt")).unwrap();
        let way = walk(&d.join("tls.crt"));
        assert_eq!(way.end, d.join("..2026_01/tls.crt"));
        assert_eq!(way.links, [d.join("tls.crt"), d.join("..data")]);
        for p in ["tls.crt", "..data", "..2026_01", "..2026_01/tls.crt"] {
            assert!(way.visited.contains(&d.join(p)), "{p} not on {way:?}");
        }
        let folders: BTreeSet<PathBuf> = way.folders().collect();
        assert_eq!(
            folders,
            BTreeSet::from([d.clone(), d.join("..2026_01")]),
            "the volume and the data folder"
        );
    }

    /// certbot: `live/x/cert.pem -> ../../archive/x/cert1.pem`; `..` applies after the link.
    #[test]
    fn relative_links_with_parent_steps_and_loops_end() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(d.join("live/x")).unwrap();
        std::fs::create_dir_all(d.join("archive/x")).unwrap();
        std::fs::write(d.join("archive/x/cert1.pem"), "x").unwrap();
        symlink("../../archive/x/cert1.pem", d.join("live/x/cert.pem")).unwrap();
        let way = walk(&d.join("live/x/cert.pem"));
        assert_eq!(way.end, d.join("archive/x/cert1.pem"));
        let folders: BTreeSet<PathBuf> = way.folders().collect();
        assert_eq!(
            folders,
            BTreeSet::from([d.join("live/x"), d.join("archive/x")])
        );

        symlink("b", d.join("a")).unwrap();
        symlink("a", d.join("b")).unwrap();
        let way = walk(&d.join("a"));
        assert_eq!(way.links.len(), MAX_SYMLINKS, "a loop stops at the limit");

        let way = walk(&d.join("gone/tls.crt"));
        assert_eq!(way.end, d.join("gone/tls.crt"));
        assert_eq!(existing_ancestor(&d.join("gone")), d);
    }

    #[test]
    fn reads_do_not_wake_writes_and_renames_on_the_way_do() {
        use notify::event::{CreateKind, ModifyKind, RenameMode};
        let relevant = Mutex::new(HashSet::from([PathBuf::from("/s/tls.crt")]));
        let ev = |kind, p: &str| Ok(notify::Event::new(kind).add_path(PathBuf::from(p)));
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Read));
        let written = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(!wakes(&ev(open, "/s/tls.crt"), &relevant));
        assert!(!wakes(&ev(closed, "/s/tls.crt"), &relevant));
        assert!(wakes(&ev(written, "/s/tls.crt"), &relevant));
        assert!(wakes(&ev(renamed, "/s/tls.crt"), &relevant));
        assert!(!wakes(&ev(renamed, "/s/access.log"), &relevant));
        assert!(!wakes(
            &ev(EventKind::Create(CreateKind::File), "/s/tls.crt.tmp"),
            &relevant
        ));
        let overflow =
            Ok(notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan));
        assert!(wakes(&overflow, &relevant));
    }

    /// Every file a watched block names is watched; blocks without `watch` are not.
    #[test]
    fn the_files_of_watched_blocks() {
        let yaml = r#"
listeners:
  - name: a
    address: "127.0.0.1:1"
    tls:
      cert: a.crt
      key: a.key
      client_ca: ca.crt
      sni_certs: [ { names: [x], cert: x.crt, key: x.key } ]
      watch: true
  - { name: b, address: "127.0.0.1:2", tls: { cert: b.crt, key: b.key, client_auth: none } }
upstreams:
  u: { peers: ["127.0.0.1:3"], tls: { sni: u, ca: u-ca.crt, client_cert: c.crt, client_key: c.key, watch: true } }
  v: { peers: ["127.0.0.1:4"], tls: { sni: v, ca: v-ca.crt, watch: false } }
"#;
        let c = Config::parse(yaml, Path::new("/etc/gh")).unwrap();
        let files = |names: &[&str]| -> Vec<PathBuf> {
            names.iter().map(|n| Path::new("/etc/gh").join(n)).collect()
        };
        assert_eq!(
            watched_files(&c),
            vec![
                (
                    Block::Listener(0),
                    files(&["a.crt", "a.key", "x.crt", "x.key", "ca.crt"])
                ),
                (Block::Upstream(0), files(&["u-ca.crt", "c.crt", "c.key"])),
            ]
        );
    }

    #[test]
    fn hashes_tell_contents_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("a");
        std::fs::write(&f, "one").unwrap();
        let one = hash_file(&f).unwrap();
        std::fs::write(&f, "two").unwrap();
        assert_ne!(hash_file(&f).unwrap(), one);
        std::fs::write(&f, "one").unwrap();
        assert_eq!(hash_file(&f).unwrap(), one);
        assert!(hash_file(&tmp.path().join("missing")).is_err());
    }
}
