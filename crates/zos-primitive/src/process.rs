//! Processes a primitive starts to outlive the agent (QEMU, ZeroDB servers): the agent finds
//! them again by a recorded pid, and must not mistake a dead or reused pid for them.

/// The command line of process `pid` (NUL-separated arguments) when it runs: it exists and is
/// not a zombie. The caller then checks that the arguments are those of what it started.
pub fn live_cmdline(pid: u32) -> Option<Vec<u8>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the last ')' (the command name may contain anything).
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, None | Some("Z") | Some("X")) {
        return None;
    }
    std::fs::read(format!("/proc/{pid}/cmdline")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_a_free_pid_does_not() {
        let me = live_cmdline(std::process::id()).expect("the test process runs");
        assert!(!me.is_empty());
        // Above the kernel's pid_max limit (4194304): never a process.
        assert_eq!(live_cmdline(4_194_305), None);
    }
}
