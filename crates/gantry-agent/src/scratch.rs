//! Scratch working directories for attempts whose job names none.
//!
//! Each attempt gets a directory of its own under `DATA_DIR/work`, empty
//! when it starts. A directory its attempt left empty, with the owner and
//! permissions it was made with, is kept and handed to a later attempt
//! instead of being removed and made again: on ext4, allocating and freeing
//! an inode per task was, with the per-attempt record file, about half of
//! the agent's CPU for short tasks. Anything an attempt leaves behind is
//! removed with the directory. Directories are named `slot-N`; at most as
//! many exist as attempts ever ran at once.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Mutex;

const PREFIX: &str = "slot-";

/// A scratch directory as it was made: what it must still be to be reused.
#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
    mode: u32,
    uid: u32,
    gid: u32,
}

pub struct ScratchDirs {
    root: PathBuf,
    free: Mutex<Vec<Scratch>>,
    next: AtomicU64,
}

impl Scratch {
    fn of(path: PathBuf) -> std::io::Result<Scratch> {
        let m = std::fs::symlink_metadata(&path)?;
        Ok(Scratch {
            path,
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
        })
    }

    /// Still an empty directory with the owner and permissions it had.
    fn reusable(&self) -> bool {
        let Ok(m) = std::fs::symlink_metadata(&self.path) else {
            return false;
        };
        m.is_dir()
            && (m.mode(), m.uid(), m.gid()) == (self.mode, self.uid, self.gid)
            && std::fs::read_dir(&self.path).is_ok_and(|mut entries| entries.next().is_none())
    }
}

impl ScratchDirs {
    /// Scratch directories under `root`; those an earlier run left empty
    /// are reused, anything else it left there is removed, except `keep`
    /// (directories of attempts still running under their supervisors).
    pub fn open(root: &Path, keep: &[PathBuf]) -> std::io::Result<ScratchDirs> {
        std::fs::create_dir_all(root)?;
        let mut free = Vec::new();
        let mut next = 0;
        for entry in std::fs::read_dir(root)?.flatten() {
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            next = next.max(n + 1);
            let path = entry.path();
            if keep.contains(&path) {
                continue;
            }
            match Scratch::of(path.clone()) {
                Ok(s) if s.reusable() => free.push(s),
                _ => {
                    tracing::info!(dir = %path.display(), "removing a working directory left by an earlier run");
                    remove(&path);
                }
            }
        }
        Ok(ScratchDirs {
            root: root.to_owned(),
            free: Mutex::new(free),
            next: AtomicU64::new(next),
        })
    }

    /// A directory of this set an attempt from before a restart ran in.
    pub fn adopt(&self, path: &Path) -> Option<Scratch> {
        if path.parent() != Some(self.root.as_path()) {
            return None;
        }
        Scratch::of(path.to_path_buf()).ok()
    }

    /// An empty directory for one attempt, owned by `owner` (uid, gid)
    /// when given (mode 0700), else by the agent.
    pub async fn take(&self, owner: Option<(u32, u32)>) -> std::io::Result<Scratch> {
        let s = self.take_any().await?;
        match owner {
            Some((uid, gid)) if (s.uid, s.gid) != (uid, gid) => {
                tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::PermissionsExt;
                    std::os::unix::fs::chown(&s.path, Some(uid), Some(gid))?;
                    std::fs::set_permissions(&s.path, std::fs::Permissions::from_mode(0o700))?;
                    Scratch::of(s.path)
                })
                .await
                .map_err(std::io::Error::other)?
            }
            _ => Ok(s),
        }
    }

    async fn take_any(&self) -> std::io::Result<Scratch> {
        if let Some(s) = self.free.lock().await.pop() {
            return Ok(s);
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.root.join(format!("{PREFIX}{n}"));
        tokio::task::spawn_blocking(move || {
            // A left-over of the same name (made by hand?) is not reused.
            if path.exists() {
                remove(&path);
            }
            std::fs::create_dir(&path)?;
            Scratch::of(path)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// The attempt is over (its process group killed): keep the directory
    /// for the next one if it is as it was made, else remove it.
    pub async fn give_back(&self, s: Scratch) {
        // Two metadata calls on a directory that is usually empty: cheaper
        // inline than a hop to the blocking pool.
        if s.reusable() {
            self.free.lock().await.push(s);
            return;
        }
        let _ = tokio::task::spawn_blocking(move || remove(&s.path)).await;
    }
}

/// Removes a directory tree, first making directories writable where the
/// task took that away (so a `chmod -w` does not leave it behind).
fn remove(path: &Path) {
    if std::fs::remove_dir_all(path).is_ok() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(path) {
        tracing::warn!(dir = %path.display(), error = %e, "cannot remove a working directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn t10_an_empty_directory_is_reused_and_a_used_one_is_not() {
        let root = tempfile::tempdir().unwrap();
        let dirs = ScratchDirs::open(root.path(), &[]).unwrap();
        let a = dirs.take(None).await.unwrap();
        let a_path = a.path.clone();
        let b = dirs.take(None).await.unwrap();
        assert_ne!(a_path, b.path, "two attempts at once never share one");
        dirs.give_back(a).await;
        assert_eq!(
            dirs.take(None).await.unwrap().path,
            a_path,
            "an empty one is reused"
        );

        std::fs::write(b.path.join("left.txt"), "x").unwrap();
        let b_path = b.path.clone();
        dirs.give_back(b).await;
        assert!(!b_path.exists(), "a directory with leftovers is removed");
        let c = dirs.take(None).await.unwrap();
        assert!(std::fs::read_dir(&c.path).unwrap().next().is_none());
    }

    #[tokio::test]
    async fn t10_changed_permissions_are_not_passed_on() {
        let root = tempfile::tempdir().unwrap();
        let dirs = ScratchDirs::open(root.path(), &[]).unwrap();
        let a = dirs.take(None).await.unwrap();
        let path = a.path.clone();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o500)).unwrap();
        dirs.give_back(a).await;
        assert!(!path.exists());
        let b = dirs.take(None).await.unwrap();
        let mode = std::fs::metadata(&b.path).unwrap().permissions().mode();
        assert_ne!(mode & 0o777, 0o500);
    }

    #[tokio::test]
    async fn t10_what_an_earlier_run_left_is_cleaned_up_or_reused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("slot-3/deep")).unwrap();
        std::fs::create_dir_all(root.path().join("slot-7")).unwrap();
        std::fs::create_dir_all(root.path().join("not-ours")).unwrap();
        let dirs = ScratchDirs::open(root.path(), &[]).unwrap();
        assert!(
            !root.path().join("slot-3").exists(),
            "a used one is removed"
        );
        assert!(
            root.path().join("not-ours").exists(),
            "others are left alone"
        );
        let a = dirs.take(None).await.unwrap();
        assert_eq!(a.path, root.path().join("slot-7"), "an empty one is reused");
        let b = dirs.take(None).await.unwrap();
        assert_eq!(
            b.path,
            root.path().join("slot-8"),
            "new names do not collide"
        );
    }
}
