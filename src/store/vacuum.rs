//! `folio vacuum`: rewrites a data dir into a fresh one, giving back the
//! space sled keeps for replaced and removed records (compaction's rewrites
//! make the file grow, never shrink).
//!
//! Steps, for data dir `DIR`, while no server holds it:
//! 1. lock `DIR` (as a server would: it fails if one runs) and open its db;
//! 2. create `DIR.vacuum-tmp`, lock it, and copy every tree into a fresh db
//!    there, [`COPY_BATCH`] records per batch;
//! 3. flush it, and verify: each tree's record count, and sled's checksum
//!    of every tree's keys and values, equal the old db's;
//! 4. close both, then swap: rename `DIR` to `DIR.vacuum-old`, rename
//!    `DIR.vacuum-tmp` to `DIR`, remove `DIR.vacuum-old`, fsyncing the
//!    parent directory after each step.
//!
//! Both locks are held until the end (a lock follows its file through the
//! renames), so a server or a second vacuum started meanwhile fails.
//!
//! A crash leaves one of these, which [`recover`] (run by `folio vacuum`
//! before anything else) sorts out, and `folio serve` refuses to start on
//! ([`refuse_leftovers`]):
//! - `DIR` and `DIR.vacuum-tmp`: the copy was cut short; `DIR` is untouched.
//!   The copy is removed.
//! - `DIR.vacuum-old` and `DIR.vacuum-tmp`, no `DIR`: between the renames.
//!   The copy was verified before the first rename, so it is renamed to
//!   `DIR` and the old one removed.
//! - `DIR` and `DIR.vacuum-old`: the swap was done; the old one is removed.
//! - only `DIR.vacuum-old`: the copy is gone (removed by hand?); the old
//!   one is the original data and is renamed back to `DIR`.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::sled_store::{lock_dir, open_sled};
use super::StoreError;

/// Records copied per batch: bounds the memory a copy holds at once.
pub const COPY_BATCH: usize = 4096;

/// Why a vacuum failed. Whatever it is, `DIR` holds the data, complete:
/// either the old db or, once the swap started, the verified copy.
#[derive(Debug, thiserror::Error)]
pub enum VacuumError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} holds no folio data (no sled database in it)")]
    NoData(PathBuf),
    #[error(
        "the copy does not match the original ({0}); {1} is unchanged and the copy was removed"
    )]
    Mismatch(String, PathBuf),
    #[error("{0} is missing and so is {0}.vacuum-old, but {0}.vacuum-tmp exists: it may be an incomplete copy, so nothing was done; look at it and rename it to {0} if it is the data")]
    Ambiguous(PathBuf),
}

/// What a vacuum did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VacuumReport {
    /// What [`recover`] did first, if anything.
    pub recovered: Option<String>,
    /// Bytes of the data dir's files before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Records copied per tree.
    pub trees: Vec<(String, u64)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `DIR` with `suffix` appended to its last component.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

/// The copy being written.
pub fn tmp_dir(dir: &Path) -> PathBuf {
    sibling(dir, ".vacuum-tmp")
}

/// The original, between the renames.
pub fn old_dir(dir: &Path) -> PathBuf {
    sibling(dir, ".vacuum-old")
}

/// Makes renames and removals in `dir`'s parent durable.
fn sync_parent(dir: &Path) -> Result<(), StoreError> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|f| f.sync_all())
        .map_err(io(parent))
}

fn has_data(dir: &Path) -> bool {
    dir.join("sled").is_dir()
}

/// For `folio serve`: refuses a data dir whose vacuum was interrupted (or
/// is running), since the data may be in a sibling directory.
///
/// # Errors
/// [`StoreError::VacuumLeftover`].
pub fn refuse_leftovers(dir: &Path) -> Result<(), StoreError> {
    if tmp_dir(dir).exists() || old_dir(dir).exists() {
        return Err(StoreError::VacuumLeftover {
            path: dir.to_owned(),
        });
    }
    Ok(())
}

/// Sorts out what an interrupted vacuum left (see the module docs).
/// Returns what it did, or `None` if there was nothing to do.
///
/// # Errors
/// A vacuum is running ([`StoreError::Locked`]); [`VacuumError::Ambiguous`];
/// I/O failures.
pub fn recover(dir: &Path) -> Result<Option<String>, VacuumError> {
    let (tmp, old) = (tmp_dir(dir), old_dir(dir));
    let (has_tmp, has_old, has_dir) = (tmp.exists(), old.exists(), dir.exists());
    if !has_tmp && !has_old {
        return Ok(None);
    }
    // A running vacuum holds these locks; so does a server on `dir`.
    let _locks = [&tmp, &old, &dir.to_path_buf()]
        .into_iter()
        .filter(|d| d.join("folio.lock").exists())
        .map(|d| lock_dir(d))
        .collect::<Result<Vec<File>, StoreError>>()?;
    let done = if has_old && has_data(dir) {
        if has_tmp {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
        format!(
            "an earlier vacuum had swapped in the copy; removed {}",
            old.display()
        )
    } else if has_old && has_tmp {
        if has_dir {
            // An empty `dir` (no db): nothing of value in it.
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(io(&tmp))?;
        sync_parent(dir)?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
        format!(
            "an earlier vacuum stopped between its renames; finished it (its verified copy is now {}, {} removed)",
            dir.display(),
            old.display()
        )
    } else if has_old {
        if has_dir {
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
        }
        std::fs::rename(&old, dir).map_err(io(&old))?;
        format!(
            "an earlier vacuum's copy was gone; renamed {} back to {}",
            old.display(),
            dir.display()
        )
    } else if has_data(dir) {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        format!(
            "an earlier vacuum was cut short while copying; removed its copy {} ({} was untouched)",
            tmp.display(),
            dir.display()
        )
    } else {
        return Err(VacuumError::Ambiguous(dir.to_owned()));
    };
    sync_parent(dir)?;
    Ok(Some(done))
}

/// Bytes of every file under `dir`, recursively.
///
/// # Errors
/// I/O failures.
pub fn dir_bytes(dir: &Path) -> Result<u64, StoreError> {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let entry = entry.map_err(io(&d))?;
            let meta = entry.metadata().map_err(io(&entry.path()))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// Copies every tree of `from` into `to`; the record count of each.
fn copy(from: &sled::Db, to: &sled::Db) -> Result<Vec<(String, u64)>, StoreError> {
    let mut trees = Vec::new();
    for name in from.tree_names() {
        let (src, dst) = (from.open_tree(&name)?, to.open_tree(&name)?);
        let mut count = 0u64;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for kv in src.iter() {
            let (k, v) = kv?;
            batch.insert(k, v);
            in_batch += 1;
            count += 1;
            if in_batch == COPY_BATCH {
                dst.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
        }
        dst.apply_batch(batch)?;
        trees.push((String::from_utf8_lossy(&name).into_owned(), count));
    }
    Ok(trees)
}

/// Whether `db` holds exactly `trees` (names and counts) and has `checksum`.
fn verify(
    db: &sled::Db,
    trees: &[(String, u64)],
    checksum: u32,
) -> Result<Option<String>, StoreError> {
    for (name, count) in trees {
        let n = db.open_tree(name.as_bytes())?.iter().count() as u64;
        if n != *count {
            return Ok(Some(format!("tree {name}: {n} records copied of {count}")));
        }
    }
    let got = db.checksum()?;
    Ok((got != checksum).then(|| format!("checksum {got:08x}, expected {checksum:08x}")))
}

/// Rewrites the data dir `dir` into a fresh one (see the module docs). Needs
/// free disk for a second copy of the live records.
///
/// # Errors
/// [`StoreError::Locked`] if a server (or another vacuum) holds it, and
/// then nothing is changed; [`VacuumError::NoData`]; a copy that does not
/// verify; I/O and sled failures.
pub fn vacuum(dir: &Path) -> Result<VacuumReport, VacuumError> {
    let recovered = recover(dir)?;
    if !has_data(dir) {
        return Err(VacuumError::NoData(dir.to_owned()));
    }
    let old_lock = lock_dir(dir)?;
    let bytes_before = dir_bytes(dir)?;
    let tmp = tmp_dir(dir);
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    sync_parent(dir)?;
    let copied = (|| {
        let tmp_lock = lock_dir(&tmp)?;
        let old_db = open_sled(&dir.join("sled"))?;
        let new_db = open_sled(&tmp.join("sled"))?;
        let trees = copy(&old_db, &new_db)?;
        new_db.flush()?;
        let mismatch = verify(&new_db, &trees, old_db.checksum()?)?;
        Ok::<_, StoreError>((tmp_lock, trees, mismatch))
    })();
    let (tmp_lock, trees) = match copied {
        Ok((lock, trees, None)) => (lock, trees),
        Ok((_, _, Some(mismatch))) => {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
            return Err(VacuumError::Mismatch(mismatch, dir.to_owned()));
        }
        Err(e) => {
            // Best effort: the original is untouched either way, and a
            // leftover copy is removed by the next vacuum.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.into());
        }
    };
    // Both dbs are closed here (dropped above); the locks stay held.
    let old = old_dir(dir);
    std::fs::rename(dir, &old).map_err(io(dir))?;
    sync_parent(dir)?;
    std::fs::rename(&tmp, dir).map_err(io(&tmp))?;
    sync_parent(dir)?;
    std::fs::remove_dir_all(&old).map_err(io(&old))?;
    sync_parent(dir)?;
    drop((old_lock, tmp_lock));
    Ok(VacuumReport {
        recovered,
        bytes_before,
        bytes_after: dir_bytes(dir)?,
        trees,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_sit_next_to_the_data_dir() {
        assert_eq!(
            tmp_dir(Path::new("/srv/folio-data")),
            PathBuf::from("/srv/folio-data.vacuum-tmp")
        );
        assert_eq!(
            old_dir(Path::new("data/")),
            PathBuf::from("data.vacuum-old")
        );
    }

    #[test]
    fn each_interrupted_state_is_recovered_to_a_complete_data_dir() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("data");
        let with_marker = |d: &Path, marker: &str| {
            std::fs::create_dir_all(d.join("sled")).expect("mkdir");
            std::fs::write(d.join("marker"), marker).expect("write");
        };
        let marker = |d: &Path| std::fs::read_to_string(d.join("marker")).expect("marker");
        let clean = |dir: &Path| {
            assert!(!tmp_dir(dir).exists() && !old_dir(dir).exists());
            refuse_leftovers(dir).expect("nothing left");
        };

        // Cut short while copying: the original stays.
        with_marker(&dir, "original");
        with_marker(&tmp_dir(&dir), "partial copy");
        assert!(refuse_leftovers(&dir).is_err());
        assert!(recover(&dir).expect("recover").is_some());
        assert_eq!(marker(&dir), "original");
        clean(&dir);

        // Between the renames: the verified copy goes in.
        std::fs::rename(&dir, old_dir(&dir)).expect("rename");
        with_marker(&tmp_dir(&dir), "copy");
        assert!(refuse_leftovers(&dir).is_err());
        recover(&dir).expect("recover");
        assert_eq!(marker(&dir), "copy");
        clean(&dir);

        // After the swap, before the removal.
        with_marker(&old_dir(&dir), "stale");
        recover(&dir).expect("recover");
        assert_eq!(marker(&dir), "copy");
        clean(&dir);

        // Only the original, renamed: it goes back.
        std::fs::rename(&dir, old_dir(&dir)).expect("rename");
        recover(&dir).expect("recover");
        assert_eq!(marker(&dir), "copy");
        clean(&dir);

        // Only a copy, and no data dir: left alone.
        std::fs::rename(&dir, tmp_dir(&dir)).expect("rename");
        assert!(matches!(recover(&dir), Err(VacuumError::Ambiguous(_))));
        assert_eq!(marker(&tmp_dir(&dir)), "copy");

        // Nothing left: nothing to do.
        std::fs::rename(tmp_dir(&dir), &dir).expect("rename");
        assert!(recover(&dir).expect("recover").is_none());
    }
}
