//! Running the real system tools (`losetup`, `mkfs.btrfs`, `mount`, `btrfs`, `qemu-img`) with
//! errors that say which command failed, how, and what it printed on stderr.

use std::fmt::Write as _;
use std::process::{ExitStatus, Stdio};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// A system command that could not be started or exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program could not be spawned (missing binary, permissions).
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited with a failure status.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

impl CmdError {
    /// The command's stderr, when it ran and failed.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            CmdError::Failed { stderr, .. } => Some(stderr),
            CmdError::Spawn { .. } => None,
        }
    }
}

/// Render a command line for error messages. Arguments are printed as given, so callers must
/// never put secrets in arguments (secrets go through stdin, see [`run_with_stdin`]).
fn render(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        let _ = write!(s, " {a}");
    }
    s
}

/// Run `program args…`, return its stdout on success.
pub async fn run(program: &str, args: &[&str]) -> Result<String, CmdError> {
    run_with_stdin(program, args, None).await
}

/// Run `program args…` feeding `stdin` (then closing it), return its stdout on success.
///
/// This is how secrets reach `qemu-img`/`qemu-io`: a pipe, never a file or an argument.
pub async fn run_with_stdin(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<String, CmdError> {
    let command = render(program, args);
    tracing::debug!(%command, "exec");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawn_err = |source| CmdError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was configured as piped");
        // A write error means the child exited early; its status below tells why.
        let _ = pipe.write_all(data).await;
        drop(pipe);
    }
    let out = child.wait_with_output().await.map_err(spawn_err)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CmdError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Whether `program` can be found on `PATH` (used by tests to skip loudly).
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failure_carries_command_status_and_stderr() {
        let err = run("sh", &["-c", "echo oops >&2; exit 3"])
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("oops"), "{msg}");
        assert!(msg.contains('3'), "{msg}");
    }

    #[tokio::test]
    async fn stdin_is_delivered_and_closed() {
        let out = run_with_stdin("cat", &[], Some(b"secret")).await.unwrap();
        assert_eq!(out, "secret");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = run("/nonexistent/zos-nothing", &[]).await.unwrap_err();
        assert!(matches!(err, CmdError::Spawn { .. }));
    }
}
