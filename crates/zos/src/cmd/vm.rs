//! `zos vm logs CONTRACT NAME [--follow]`: a VM's serial console, from its node over RMB
//! (`zos.vm.logs`, answered to the deployment's owner only).

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;

use super::client::ClientArgs;

/// VM commands.
#[derive(clap::Subcommand, Debug)]
pub enum VmCmd {
    /// Print a VM's console (the node keeps 8 MiB, rotated).
    Logs {
        /// Contract id of the deployment.
        contract: u64,
        /// The zmachine workload's name.
        name: String,
        /// Keep printing what the guest writes (polls the node every second) until Ctrl-C.
        #[arg(long, short)]
        follow: bool,
        /// How much of the end of the console to print first.
        #[arg(long, default_value_t = 64 << 10)]
        bytes: u64,
        #[command(flatten)]
        args: ClientArgs,
    },
}

/// What `now` adds after `prev` (both tails of the same growing, rotating log): the part of
/// `now` after the longest suffix of `prev` found in it; all of `now` when they no longer
/// overlap (more was written between two polls than a tail holds).
fn new_part<'a>(prev: &str, now: &'a str) -> &'a str {
    if prev.is_empty() {
        return now;
    }
    // A suffix long enough to be unique in practice (console lines carry no timestamps, so
    // short repeats are common), and on a char boundary.
    // At most half of `prev`, so that a window that moved on by less than that still matches.
    let mut start = prev.len() - (prev.len() / 2).clamp(1, 4096);
    while !prev.is_char_boundary(start) {
        start += 1;
    }
    let anchor = &prev[start..];
    match now.rfind(anchor) {
        Some(i) => &now[i + anchor.len()..],
        None => now,
    }
}

/// Runs a VM command.
pub fn run(cmd: VmCmd) -> anyhow::Result<()> {
    let VmCmd::Logs {
        contract,
        name,
        follow,
        bytes,
        args,
    } = cmd;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let grid = args.connect().await?;
        let mut prev = grid.vm_logs(contract, &name, bytes).await?;
        if args.json && !follow {
            println!("{}", serde_json::json!({ "log": prev }));
            return Ok(());
        }
        let mut out = std::io::stdout();
        out.write_all(prev.as_bytes())?;
        out.flush()?;
        if !follow {
            return Ok(());
        }
        // One signal listener for the whole follow: a Ctrl-C during a call is not lost.
        let stop = super::shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = &mut stop => return Ok(()),
            }
            let now = grid.vm_logs(contract, &name, 1 << 20).await?;
            out.write_all(new_part(&prev, &now).as_bytes())?;
            out.flush()?;
            prev = now;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::new_part;

    #[test]
    fn follow_prints_only_what_is_new() {
        assert_eq!(new_part("", "abc"), "abc");
        assert_eq!(new_part("abc", "abcdef"), "def");
        // The tail window moved (old start dropped): still only the new end.
        assert_eq!(new_part("abcdef", "cdefgh"), "gh");
        assert_eq!(new_part("abc", "abc"), "");
        // No overlap left (rotation, or more than a tail between polls): all of it.
        assert_eq!(new_part("xyz", "abc"), "abc");
        // Multi-byte characters at the cut.
        let prev = format!("{}é", "a".repeat(4095));
        assert_eq!(new_part(&prev, &format!("{prev}ü")), "ü");
    }
}
