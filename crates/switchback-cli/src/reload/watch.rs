//! `--watch`: reloads when the config file, or a certificate, key or CA file it names,
//! changes.
//!
//! The content is read (through any symlink) rather than watched with inotify: an editor's
//! write-by-rename and a Kubernetes ConfigMap update (a `..data` symlink swapped to a new
//! directory) both replace the file a watch would follow, and a config file is small. A
//! change counts once it has held still for one look, so a file caught half-written isn't
//! loaded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use switchback_config::Config;

use crate::proxy::Control;

/// How often `--watch` looks at the file.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Looks at `path` every [`WATCH_EVERY`] and asks `control` for a reload when it changed;
/// returns once the proxy no longer takes reloads (it is draining).
pub(crate) async fn watch(path: PathBuf, control: Control) {
    let mut applied = snapshot(&path);
    let mut pending: Option<Vec<u8>> = None;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = snapshot(&path);
        if now == applied {
            pending = None;
            continue;
        }
        match (&now, &pending) {
            (Some(content), Some(seen)) if content == seen => {
                tracing::info!(file = %path.display(), "--watch: the config file or a certificate changed; reloading");
                if control.reload().await.is_none() {
                    return;
                }
                applied = now;
                pending = None;
            }
            (Some(content), _) => pending = Some(content.clone()),
            // Gone for a moment (mid-rename): look again next time.
            (None, _) => pending = None,
        }
    }
}

/// What `--watch` compares: the config file's bytes, then those of every certificate, key and
/// CA file it names (a certificate renewed in place reloads too). `None` while the config
/// file can't be read.
fn snapshot(path: &Path) -> Option<Vec<u8>> {
    let mut bytes = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if let Ok(config) = Config::from_yaml_str(&text, &path.display().to_string()) {
        let listeners = config
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| {
                t.certificates
                    .iter()
                    .flat_map(|c| [c.cert_chain_file.clone(), c.private_key_file.clone()])
            });
        let clusters = config
            .clusters
            .iter()
            .filter_map(|c| c.tls.as_ref())
            .flat_map(|t| {
                [&t.trusted_ca_file, &t.cert_chain_file, &t.private_key_file]
                    .into_iter()
                    .flatten()
                    .cloned()
            });
        for file in listeners.chain(clusters) {
            bytes.extend_from_slice(b"\0");
            bytes.extend(std::fs::read(file).unwrap_or_default());
        }
    }
    Some(bytes)
}
