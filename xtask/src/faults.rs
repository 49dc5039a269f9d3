//! The failure classes of the drills, as faults injected into a running stack and restored:
//! one definition shared by `cargo xtask drill` (against `cargo xtask run`), the end-to-end
//! drill test and `cargo xtask bench failover`.
//!
//! Each fault acts on one origin, the site's target ([`Site::origin`]): the primary in the
//! two-origin stack, any named origin in a stack of N (`cargo xtask drill --origin o3`).
//!
//! | fault | what the target origin does | how it is injected |
//! |---|---|---|
//! | `origin-kill` | dies (connections refused) | SIGKILL; restore: start again |
//! | `packager-kill` | serves an ever older playlist | SIGKILL the packager; restore: start |
//! | `origin-freeze` | hangs: the kernel accepts and ACKs, nobody answers | SIGSTOP / SIGCONT |
//! | `origin-5xx` | answers 500 | the stream directory made unreadable (as the service user) |
//! | `origin-slow` | answers, ~100x slower than it needs to | nftables: its replies beyond 64 kB/s dropped |
//! | `origin-partition` | its packets vanish | nftables: every packet to or from its port dropped |
//! | `origin-truncate` | serves segments cut short mid-body | the newest listed segment and every later one truncated in place (as the service user) |
//! | `ctl-restart` | nothing: switcher-ctl is killed and started again | SIGKILL switcher-ctl; restore: start |
//!
//! nftables rules live in their own table (`inet hls_edge_drill`) in the stack's network
//! namespace and are removed on restore and on drop, whatever happens in between.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// nftables table of the drills.
const NFT_TABLE: &str = "hls_edge_drill";
/// Rate the slow origin's replies are held to. The demo stream needs ~1 Mbit/s, an origin on
/// the edge serves it at memory speed: 64 kB/s is a segment in several seconds, slower than
/// real time, while every playlist still arrives.
const SLOW_RATE: &str = "64 kbytes/second";

/// A failure class (see the module table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// SIGKILL the primary origin.
    OriginKill,
    /// SIGKILL the primary packager.
    PackagerKill,
    /// SIGSTOP the primary origin.
    OriginFreeze,
    /// The primary answers 500.
    #[value(name = "origin-5xx")]
    Origin5xx,
    /// The primary answers, slower than real time.
    OriginSlow,
    /// The primary's packets vanish.
    OriginPartition,
    /// The primary serves segments cut short.
    OriginTruncate,
    /// switcher-ctl killed and restarted.
    CtlRestart,
}

impl Fault {
    /// Every fault, in drill order.
    pub const ALL: [Fault; 8] = [
        Fault::OriginKill,
        Fault::PackagerKill,
        Fault::OriginFreeze,
        Fault::Origin5xx,
        Fault::OriginSlow,
        Fault::OriginPartition,
        Fault::OriginTruncate,
        Fault::CtlRestart,
    ];

    /// The CLI word.
    pub fn name(self) -> &'static str {
        match self {
            Fault::OriginKill => "origin-kill",
            Fault::PackagerKill => "packager-kill",
            Fault::OriginFreeze => "origin-freeze",
            Fault::Origin5xx => "origin-5xx",
            Fault::OriginSlow => "origin-slow",
            Fault::OriginPartition => "origin-partition",
            Fault::OriginTruncate => "origin-truncate",
            Fault::CtlRestart => "ctl-restart",
        }
    }

    /// Whether the fault makes the primary unhealthy (every class but `ctl-restart`).
    pub fn fails_primary(self) -> bool {
        self != Fault::CtlRestart
    }

    /// The service the fault acts on in the two-origin stack (its target is the primary).
    pub fn service(self) -> String {
        self.service_on("primary")
    }

    /// The service the fault acts on when its target is the origin called `origin`
    /// (`origin-NAME`, `packager-NAME`, or switcher-ctl).
    pub fn service_on(self, origin: &str) -> String {
        match self {
            Fault::PackagerKill => format!("packager-{origin}"),
            Fault::CtlRestart => "switcher-ctl".into(),
            _ => format!("origin-{origin}"),
        }
    }
}

/// How a drill reaches the stack's processes: the test's [`crate::stack::Stack`], or the
/// pid files of a `cargo xtask run`.
pub trait Processes {
    /// Sends `signal` to service `name` (and reaps it when it is a kill).
    fn signal(&mut self, name: &str, signal: i32) -> Result<()>;
    /// Starts service `name` again and waits until it is ready.
    fn start(&mut self, name: &str) -> Result<()>;
}

impl Processes for crate::stack::Stack {
    fn signal(&mut self, name: &str, signal: i32) -> Result<()> {
        if signal == libc::SIGKILL || signal == libc::SIGTERM {
            self.kill(name, signal)
        } else {
            crate::stack::Stack::signal(self, name, signal)
        }
    }
    fn start(&mut self, name: &str) -> Result<()> {
        crate::stack::Stack::start(self, name)
    }
}

/// Where the stack is: what a fault needs besides the processes.
#[derive(Clone, Debug)]
pub struct Site {
    /// Network namespace of the edge (`None`: this one).
    pub netns: Option<String>,
    /// Name of the origin the faults act on (`primary` in the two-origin stack).
    pub origin: String,
    /// That origin's TCP port.
    pub port: u16,
    /// That origin's HLS directory of the stream (`<hls dir>/<stream>`).
    pub stream_dir: PathBuf,
    /// The unprivileged user the services run as (file faults act as that user, so root
    /// never follows a path the services own). `None`: the current user.
    pub service_user: Option<String>,
}

impl Site {
    /// `argv` inside the edge namespace, as the service user when `as_service`.
    fn command(&self, as_service: bool, argv: &[&str]) -> Command {
        let user = if as_service {
            self.service_user.as_deref()
        } else {
            None
        };
        let mut full = crate::stack::command_prefix(self.netns.as_deref(), user);
        full.extend(argv.iter().map(|s| s.to_string()));
        let mut c = Command::new(&full[0]);
        c.args(&full[1..]);
        c
    }

    fn run(&self, as_service: bool, argv: &[&str], stdin: Option<&str>) -> Result<()> {
        let mut c = self.command(as_service, argv);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = c.spawn().with_context(|| format!("running {argv:?}"))?;
        if let Some(input) = stdin {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("{argv:?} failed: {}", out.status);
        }
        Ok(())
    }

    fn nft(&self, script: &str) -> Result<()> {
        self.run(false, &["nft", "-f", "-"], Some(script))
    }

    fn nft_clear(&self) {
        let _ = self
            .command(false, &["nft", "delete", "table", "inet", NFT_TABLE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn chmod(&self, mode: &str) -> Result<()> {
        let dir = self.stream_dir.to_string_lossy().to_string();
        self.run(true, &["chmod", mode, &dir], None)
    }
}

/// A fault in force; [`Active::restore`] ends it (drop restores what it can, too).
pub struct Active {
    fault: Fault,
    site: Site,
    /// The truncating loop of `origin-truncate`.
    truncator: Option<Child>,
    restored: bool,
}

/// Shell loop run as the service user: the newest segment the playlist lists when it starts
/// (the one players are fetching right now), then every segment file not listed before it
/// (one the packager has written but not listed yet included), is replaced (write + rename,
/// like the packager) by its first half plus one byte, so it is no whole number of TS
/// packets: a body cut short mid-segment. A player that already has the file open keeps the
/// whole one; every request after the fault gets the cut one.
const TRUNCATE_LOOP: &str = r#"cd "$1" || exit 1
listed=$(grep -v '^#' index.m3u8 2>/dev/null | grep -v '^$')
newest=$(printf '%s\n' "$listed" | tail -n 1)
seen=" "
for f in $listed; do
  [ "$f" != "$newest" ] && seen="$seen$f "
done
while :; do
  for f in *.ts; do
    [ -f "$f" ] || continue
    case "$seen" in *" $f "*) continue ;; esac
    size=$(stat -c %s "$f") || continue
    head -c $((size / 2 + 1)) "$f" > ".drill.$f" && mv -f ".drill.$f" "$f"
    seen="$seen$f "
  done
  sleep 0.02
done"#;

/// Injects `fault`.
pub fn inject(fault: Fault, site: &Site, procs: &mut dyn Processes) -> Result<Active> {
    let port = site.port;
    let service = fault.service_on(&site.origin);
    let mut truncator = None;
    match fault {
        Fault::OriginKill | Fault::PackagerKill | Fault::CtlRestart => {
            procs.signal(&service, libc::SIGKILL)?
        }
        Fault::OriginFreeze => procs.signal(&service, libc::SIGSTOP)?,
        Fault::Origin5xx => site.chmod("000")?,
        Fault::OriginSlow => {
            site.nft_clear();
            site.nft(&format!(
                "table inet {NFT_TABLE} {{\n chain out {{ type filter hook output priority 0; \
                 tcp sport {port} limit rate over {SLOW_RATE} drop; }}\n}}\n"
            ))?
        }
        Fault::OriginPartition => {
            site.nft_clear();
            site.nft(&format!(
                "table inet {NFT_TABLE} {{\n chain in {{ type filter hook input priority 0; \
                 tcp dport {port} drop; }}\n chain out {{ type filter hook output priority 0; \
                 tcp sport {port} drop; }}\n}}\n"
            ))?
        }
        Fault::OriginTruncate => {
            let dir = site.stream_dir.to_string_lossy().to_string();
            truncator = Some(
                site.command(true, &["sh", "-c", TRUNCATE_LOOP, "truncate", &dir])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting the truncating loop")?,
            );
        }
    }
    Ok(Active {
        fault,
        site: site.clone(),
        truncator,
        restored: false,
    })
}

impl Active {
    /// The fault in force.
    pub fn fault(&self) -> Fault {
        self.fault
    }

    /// Ends the fault: starts what was killed, resumes what was stopped, removes rules.
    pub fn restore(mut self, procs: &mut dyn Processes) -> Result<()> {
        self.restored = true;
        match self.fault {
            Fault::OriginKill | Fault::PackagerKill | Fault::CtlRestart => {
                procs.start(&self.fault.service_on(&self.site.origin))
            }
            Fault::OriginFreeze => {
                procs.signal(&self.fault.service_on(&self.site.origin), libc::SIGCONT)
            }
            Fault::Origin5xx => self.site.chmod("755"),
            Fault::OriginSlow | Fault::OriginPartition => {
                self.site.nft_clear();
                Ok(())
            }
            Fault::OriginTruncate => {
                self.stop_truncator();
                Ok(())
            }
        }
    }

    fn stop_truncator(&mut self) {
        if let Some(mut c) = self.truncator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        // What needs no process handle is undone even when a drill fails half-way.
        if !self.restored {
            self.stop_truncator();
            if matches!(self.fault, Fault::OriginSlow | Fault::OriginPartition) {
                self.site.nft_clear();
            }
            if self.fault == Fault::Origin5xx {
                let _ = self.site.chmod("755");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_acts_on_its_target_origins_services() {
        assert_eq!(Fault::OriginKill.service(), "origin-primary");
        assert_eq!(Fault::PackagerKill.service(), "packager-primary");
        assert_eq!(Fault::OriginFreeze.service_on("o3"), "origin-o3");
        assert_eq!(Fault::PackagerKill.service_on("o3"), "packager-o3");
        assert_eq!(Fault::CtlRestart.service_on("o3"), "switcher-ctl");
    }
}
