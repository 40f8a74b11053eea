//! `--ready-file PATH`: where switchback listens, written once it does.
//!
//! When every listener is bound (the proxy's and, when configured, the admin endpoint's),
//! switchback writes one line of JSON with the addresses it actually bound:
//!
//! ```json
//! {"admin":"127.0.0.1:41235","listen":"127.0.0.1:41234","listeners":["127.0.0.1:41234"]}
//! ```
//!
//! `listeners` has every listener's address, in the config's order; `listen` is the first.
//! `admin` is `null` without an admin endpoint. With port 0 in the config (`listen:
//! 127.0.0.1:0`) this is how a supervisor or a test learns the ports, without picking a "free"
//! port first and racing other programs for it. The file appears whole: it is written under a
//! temporary name in the same directory and renamed. It is removed when switchback exits.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::fatal::Fatal;

/// The written ready file, removed on drop.
#[derive(Debug)]
pub(crate) struct ReadyFile {
    path: PathBuf,
}

impl ReadyFile {
    /// Writes the bound addresses to `path`, replacing the file if it exists.
    pub(crate) fn write(
        path: &Path,
        listeners: &[SocketAddr],
        admin: Option<SocketAddr>,
    ) -> Result<Self, Fatal> {
        let fail = |e: &dyn std::fmt::Display| {
            Fatal::new(format!("--ready-file: cannot write {}: {e}", path.display()))
        };
        let name = path
            .file_name()
            .ok_or_else(|| fail(&"the path does not name a file"))?;
        // Same directory, so the rename is atomic; the process id keeps two instances apart.
        let mut temp_name = OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.tmp", std::process::id()));
        let temp = path.with_file_name(temp_name);

        let mut text = contents(listeners, admin);
        text.push('\n');
        std::fs::write(&temp, text).map_err(|e| fail(&e))?;
        if let Err(e) = std::fs::rename(&temp, path) {
            let _ = std::fs::remove_file(&temp);
            return Err(fail(&e));
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }
}

impl Drop for ReadyFile {
    /// A ready file left behind would tell a reader that a stopped proxy listens.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The file's JSON object.
fn contents(listeners: &[SocketAddr], admin: Option<SocketAddr>) -> String {
    serde_json::json!({
        "listen": listeners.first().map(ToString::to_string),
        "listeners": listeners.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "admin": admin.map(|a| a.to_string()),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_name_both_addresses() {
        let listen: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        let admin: SocketAddr = "[::1]:9901".parse().unwrap();
        assert_eq!(
            contents(&[listen], Some(admin)),
            r#"{"admin":"[::1]:9901","listen":"127.0.0.1:41234","listeners":["127.0.0.1:41234"]}"#
        );
        assert_eq!(
            contents(&[listen], None),
            r#"{"admin":null,"listen":"127.0.0.1:41234","listeners":["127.0.0.1:41234"]}"#
        );
    }

    #[test]
    fn written_whole_and_removed_on_drop() {
        let dir = std::env::temp_dir().join(format!("switchback-ready-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ready.json");
        std::fs::write(&path, "stale").unwrap();
        let listen: SocketAddr = "127.0.0.1:1".parse().unwrap();

        let ready = ReadyFile::write(&path, &[listen], None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", contents(&[listen], None)), "replaced");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ready.json"], "no temporary file left");
        drop(ready);
        assert!(!path.exists());

        let err = ReadyFile::write(&dir.join("missing/ready.json"), &[listen], None).unwrap_err();
        assert!(
            err.to_string().starts_with("--ready-file: cannot write "),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
