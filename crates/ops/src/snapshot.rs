//! Redis snapshot copies and configuration archives: one file per run,
//! named by UTC stamp, the oldest beyond the kept count deleted.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use time::OffsetDateTime;
use tokio::process::Command;

use crate::pg::run_tool;
use crate::retention::{backup_stamp, parse_stamp};
use crate::{BackupLock, OpsError, CONFIG_DIR, REDIS_DIR};

/// Deletes the oldest `<stamp><suffix>` files of `dir` beyond `keep`.
pub fn prune_oldest(dir: &Path, suffix: &str, keep: usize) -> Result<Vec<PathBuf>, OpsError> {
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(OpsError::io("cannot list", dir))? {
        let entry = entry.map_err(OpsError::io("cannot list", dir))?;
        let name = entry.file_name();
        let Some(stamp) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
            continue;
        };
        if parse_stamp(stamp).is_some() {
            files.push((stamp.to_string(), entry.path()));
        }
    }
    files.sort();
    let mut removed = Vec::new();
    let excess = files.len().saturating_sub(keep);
    for (_, path) in files.into_iter().take(excess) {
        std::fs::remove_file(&path).map_err(OpsError::io("cannot delete", &path))?;
        removed.push(path);
    }
    Ok(removed)
}

async fn fresh_target(dir: &Path, suffix: &str) -> Result<(PathBuf, PathBuf), OpsError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(OpsError::io("cannot create", dir))?;
    let stamp = backup_stamp(OffsetDateTime::now_utc());
    let target = dir.join(format!("{stamp}{suffix}"));
    if target.exists() {
        return Err(OpsError::Invalid {
            what: "backup",
            detail: format!("{} already exists", target.display()),
        });
    }
    Ok((target.clone(), dir.join(format!("{stamp}{suffix}.partial"))))
}

/// `redis-cli --rdb`: the server streams a fresh RDB snapshot (works
/// remotely, needs no access to its data dir) into
/// `<backup_dir>/redis/<stamp>.rdb`; `keep` newest kept.
pub async fn backup_redis(
    redis_url: &str,
    backup_dir: &Path,
    keep: usize,
) -> Result<(PathBuf, Vec<PathBuf>), OpsError> {
    let _lock = BackupLock::acquire(backup_dir)?;
    let dir = backup_dir.join(REDIS_DIR);
    let (target, partial) = fresh_target(&dir, ".rdb").await?;
    let tool = Path::new("redis-cli");
    let mut command = Command::new(tool);
    command.stdin(Stdio::null()).kill_on_drop(true);
    // The password goes through the environment, not the command line.
    let (url, auth) = split_redis_password(redis_url);
    if let Some(password) = auth {
        command.env("REDISCLI_AUTH", password);
    }
    command.arg("-u").arg(url).arg("--rdb").arg(&partial);
    let result = run_tool(tool, &mut command).await;
    if let Err(error) = result {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(error);
    }
    let mut magic = [0u8; 5];
    let valid = match tokio::fs::File::open(&partial).await {
        Ok(mut file) => {
            use tokio::io::AsyncReadExt;
            file.read_exact(&mut magic).await.is_ok() && &magic == b"REDIS"
        }
        Err(_) => false,
    };
    if !valid {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(OpsError::Invalid {
            what: "redis snapshot",
            detail: "redis-cli --rdb wrote no RDB file".into(),
        });
    }
    tokio::fs::rename(&partial, &target)
        .await
        .map_err(OpsError::io("cannot rename", &target))?;
    let removed = prune_oldest(&dir, ".rdb", keep)?;
    Ok((target, removed))
}

/// `redis://user:pass@host/` -> (`redis://user@host/`, Some(pass)).
fn split_redis_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return (url.to_string(), None);
    };
    match userinfo.split_once(':') {
        Some((user, password)) if !password.is_empty() => {
            let user = if user.is_empty() {
                String::new()
            } else {
                format!("{user}@")
            };
            (
                format!("{scheme}://{user}{host}"),
                Some(password.to_string()),
            )
        }
        _ => (url.to_string(), None),
    }
}

/// A `tar.gz` of the given configuration files into
/// `<backup_dir>/config/<stamp>.tar.gz`; `keep` newest kept.
pub async fn backup_config(
    files: &[PathBuf],
    backup_dir: &Path,
    keep: usize,
) -> Result<(PathBuf, Vec<PathBuf>), OpsError> {
    if files.is_empty() {
        return Err(OpsError::Invalid {
            what: "config backup",
            detail: "no configuration file given (use --config FILE)".into(),
        });
    }
    let _lock = BackupLock::acquire(backup_dir)?;
    let dir = backup_dir.join(CONFIG_DIR);
    let (target, partial) = fresh_target(&dir, ".tar.gz").await?;
    let tool = Path::new("tar");
    let mut command = Command::new(tool);
    command.stdin(Stdio::null()).kill_on_drop(true);
    command.arg("-czf").arg(&partial);
    for file in files {
        let absolute = std::fs::canonicalize(file).map_err(OpsError::io("cannot read", file))?;
        let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
            return Err(OpsError::Invalid {
                what: "config backup",
                detail: format!("{} is not a file", file.display()),
            });
        };
        command.arg("-C").arg(parent).arg(name);
    }
    if let Err(error) = run_tool(tool, &mut command).await {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(error);
    }
    tokio::fs::rename(&partial, &target)
        .await
        .map_err(OpsError::io("cannot rename", &target))?;
    let removed = prune_oldest(&dir, ".tar.gz", keep)?;
    Ok((target, removed))
}

/// One file of a configuration archive and where a restore puts it.
#[derive(Debug, Clone)]
pub struct ConfigRestoreFile {
    pub name: String,
    pub target: PathBuf,
}

/// What `restore_config_archive` would write.
#[derive(Debug, Clone)]
pub struct ConfigRestorePlan {
    pub archive: PathBuf,
    pub target_dir: PathBuf,
    pub files: Vec<ConfigRestoreFile>,
}

/// Lists a configuration archive (`tar -tzf`): only plain file names, as
/// `backup_config` writes them, are accepted; changes nothing.
pub async fn plan_config_restore(
    archive: &Path,
    target_dir: &Path,
) -> Result<ConfigRestorePlan, OpsError> {
    let metadata = std::fs::metadata(archive).map_err(|_| OpsError::NotFound {
        path: archive.to_path_buf(),
    })?;
    if metadata.len() == 0 {
        return Err(OpsError::EmptyFile {
            path: archive.to_path_buf(),
        });
    }
    let tool = Path::new("tar");
    let mut command = Command::new(tool);
    command
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .arg("-tzf")
        .arg(archive);
    let listing = run_tool(tool, &mut command)
        .await
        .map_err(|error| OpsError::Invalid {
            what: "config restore",
            detail: format!(
                "{} is not a configuration archive (tar.gz): {error}",
                archive.display()
            ),
        })?;
    let mut files = Vec::new();
    for name in listing.lines().filter(|l| !l.is_empty()) {
        let plain = !name.contains('/') && name != "." && name != ".." && !name.starts_with('-');
        if !plain {
            return Err(OpsError::Invalid {
                what: "config restore",
                detail: format!(
                    "{} holds {name:?}: not a tbg configuration archive (plain file names only)",
                    archive.display()
                ),
            });
        }
        files.push(ConfigRestoreFile {
            name: name.to_string(),
            target: target_dir.join(name),
        });
    }
    if files.is_empty() {
        return Err(OpsError::Invalid {
            what: "config restore",
            detail: format!("{} is an empty archive", archive.display()),
        });
    }
    Ok(ConfigRestorePlan {
        archive: archive.to_path_buf(),
        target_dir: target_dir.to_path_buf(),
        files,
    })
}

/// Extracts the planned files into the target dir (through a staging
/// directory beside them); a file already there is kept as
/// `<name>.before-restore`. Returns the files written.
pub async fn restore_config_archive(plan: &ConfigRestorePlan) -> Result<Vec<PathBuf>, OpsError> {
    tokio::fs::create_dir_all(&plan.target_dir)
        .await
        .map_err(OpsError::io("cannot create", &plan.target_dir))?;
    let staging = tempfile::Builder::new()
        .prefix(".tbg-config-restore-")
        .tempdir_in(&plan.target_dir)
        .map_err(OpsError::io(
            "cannot create a staging directory in",
            &plan.target_dir,
        ))?;
    let tool = Path::new("tar");
    let mut command = Command::new(tool);
    command
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .arg("-xzf")
        .arg(&plan.archive)
        .arg("-C")
        .arg(staging.path());
    for file in &plan.files {
        command.arg(&file.name);
    }
    run_tool(tool, &mut command).await?;
    let mut written = Vec::new();
    for file in &plan.files {
        if file.target.exists() {
            let kept = plan
                .target_dir
                .join(format!("{}.before-restore", file.name));
            std::fs::rename(&file.target, &kept)
                .map_err(OpsError::io("cannot rename", &file.target))?;
        }
        let staged = staging.path().join(&file.name);
        std::fs::rename(&staged, &file.target)
            .map_err(OpsError::io("cannot write", &file.target))?;
        written.push(file.target.clone());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_password_leaves_the_url() {
        assert_eq!(
            split_redis_password("redis://:secret@10.0.0.1:6379/0"),
            (
                "redis://10.0.0.1:6379/0".to_string(),
                Some("secret".to_string())
            )
        );
        assert_eq!(
            split_redis_password("redis://tbg:secret@h/"),
            ("redis://tbg@h/".to_string(), Some("secret".to_string()))
        );
        assert_eq!(
            split_redis_password("redis://127.0.0.1:6379/"),
            ("redis://127.0.0.1:6379/".to_string(), None)
        );
    }
}
