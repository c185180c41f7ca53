//! What the kubelet does to a pod's environment and volumes, done the same
//! way here: `$(VAR)` expansion and the atomic ConfigMap/Secret volume layout.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

/// Expands `$(VAR)` with the variables defined so far, as the kubelet does:
/// `$$` is a literal `$`, and an undefined reference stays as written.
pub fn expand(value: &str, defined: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match defined.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[at..at + 2 + end + 1]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Writes `files` into `dir` the way the kubelet fills a ConfigMap or Secret
/// volume: a new `..<stamp>` directory, `..data` swapped to it atomically,
/// and `<key>` -> `..data/<key>` symlinks.
pub fn write_atomic_dir(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let stamp = format!(
        "..{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let fresh = dir.join(&stamp);
    std::fs::create_dir(&fresh)?;
    for (key, bytes) in files {
        std::fs::write(fresh.join(key), bytes)?;
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link)?;
    std::fs::rename(&tmp_link, dir.join("..data"))?;
    for key in files.keys() {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(key), &link)?;
        }
    }
    // Keys that are gone: their links go too, then the old directory.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("..") && !files.contains_key(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(())
}
