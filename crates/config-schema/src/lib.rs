//! What a service binary says about its configuration, so that the deployment files can be
//! generated from the one place each flag is declared (its clap definition).
//!
//! Every service binary calls [`parse`] instead of `Parser::parse`:
//! * `<binary> --print-config-schema` prints a [`Schema`] as JSON and exits: every argument of
//!   every (sub)command with its long name, environment variable, default and help text, read
//!   from clap's `Command::get_arguments()`. `cargo xtask codegen` runs the built binaries this
//!   way and writes `scripts/edge.env.example` and the systemd units' `Environment=` lines from
//!   it. Running the binaries, rather than linking their crates into xtask, keeps xtask's own
//!   build free of the service crates: xtask must build on a fresh machine before
//!   `cargo xtask setup` has installed the eBPF toolchain that switcher-ctl's build needs.
//! * [`DeprecatedEnv`] keeps a renamed environment variable working: clap reads one variable
//!   per argument, so when only the old name is set, the argument is pointed at the old name
//!   for this run and a warning says which name to use ([`OldName::Deprecated`]), or, for a
//!   name kept on purpose as an equally valid spelling ([`OldName::Seed`]), a line at info
//!   level says it was read. When both names are set, the current one wins.
//!
//! The flag is checked before clap parses (so it is not in `--help`, and it works even where
//! required arguments are missing).

#![deny(missing_docs)]

use std::ffi::OsStr;

use serde::{Deserialize, Serialize};

/// The hidden first argument that makes a binary print its [`Schema`] and exit.
pub const FLAG: &str = "--print-config-schema";

/// An environment variable renamed: the old name is still read (see [`OldName`] for how).
#[derive(Clone, Copy, Debug)]
pub struct DeprecatedEnv {
    /// The name before the rename.
    pub old: &'static str,
    /// The argument's current name (its clap `env`), the canonical one.
    pub new: &'static str,
    /// Whether the old name is on its way out or kept for good.
    pub kind: OldName,
}

/// How an old name of a variable is read when it is the one set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldName {
    /// Renamed: still read, with a warning to use the new name.
    Deprecated,
    /// The seed switcher's name, kept for good with its meaning (a deployment of the seed
    /// keeps working unchanged): read as a second spelling, which a line at info level
    /// notes; the prefixed name is the canonical one.
    Seed,
}

/// Every argument of a binary, by (sub)command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// The binary's name (clap's command name).
    pub bin: String,
    /// The top-level command first, then every subcommand (depth first).
    pub commands: Vec<CommandSchema>,
}

/// One command or subcommand.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandSchema {
    /// Subcommand names from the top: empty for the binary itself, `["run"]` for
    /// `switcher-ctl run`.
    pub path: Vec<String>,
    /// Its one-line description.
    pub about: Option<String>,
    /// Whether it has subcommands (and then needs one).
    pub has_subcommands: bool,
    /// Its arguments, in declaration order (clap's own `--help`/`--version` left out).
    pub args: Vec<ArgSchema>,
}

/// One argument.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArgSchema {
    /// clap's id (the field name).
    pub id: String,
    /// `--long` name without the dashes; `None` for a positional argument.
    pub long: Option<String>,
    /// Environment variable read when the flag is absent.
    pub env: Option<String>,
    /// Older names of `env`, still read with a warning ([`OldName::Deprecated`]).
    pub deprecated_env: Vec<String>,
    /// Other spellings of `env` read as well, the seed's names ([`OldName::Seed`]).
    #[serde(default)]
    pub alias_env: Vec<String>,
    /// Default values (several for a list); empty when there is none.
    pub default: Vec<String>,
    /// Separator of a list given in one value (`,`), if any.
    pub value_delimiter: Option<char>,
    /// The values it accepts, when clap knows them (value enums, booleans).
    pub possible_values: Vec<String>,
    /// Whether it must be given.
    pub required: bool,
    /// The full help text (the doc comment), without formatting.
    pub help: String,
}

/// The schema of `cmd` (a binary's clap command), with `deprecated` names attached to their
/// arguments.
pub fn schema(cmd: &clap::Command, deprecated: &[DeprecatedEnv]) -> Schema {
    // Built, clap fills in what it derives (e.g. `false` as a switch's default).
    let mut cmd = cmd.clone();
    cmd.build();
    let mut commands = Vec::new();
    collect(&cmd, &mut Vec::new(), deprecated, &mut commands);
    Schema {
        bin: cmd.get_name().to_string(),
        commands,
    }
}

fn collect(
    cmd: &clap::Command,
    path: &mut Vec<String>,
    deprecated: &[DeprecatedEnv],
    out: &mut Vec<CommandSchema>,
) {
    let text = |s: Option<&clap::builder::StyledStr>| s.map(|s| s.to_string());
    let args = cmd
        .get_arguments()
        .filter(|a| {
            // clap's own --help and --version configure nothing.
            let builtin = matches!(
                a.get_action(),
                clap::ArgAction::Help
                    | clap::ArgAction::HelpShort
                    | clap::ArgAction::HelpLong
                    | clap::ArgAction::Version
            );
            !a.is_hide_set() && !builtin
        })
        .map(|a| {
            let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
            let old_names = |kind| {
                deprecated
                    .iter()
                    .filter(|d| d.kind == kind && env.as_deref() == Some(d.new))
                    .map(|d| d.old.to_string())
                    .collect()
            };
            ArgSchema {
                id: a.get_id().to_string(),
                long: a.get_long().map(str::to_string),
                deprecated_env: old_names(OldName::Deprecated),
                alias_env: old_names(OldName::Seed),
                env,
                default: a
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect(),
                value_delimiter: a.get_value_delimiter(),
                possible_values: a
                    .get_possible_values()
                    .iter()
                    .filter(|v| !v.is_hide_set())
                    .map(|v| v.get_name().to_string())
                    .collect(),
                required: a.is_required_set(),
                help: text(a.get_long_help().or(a.get_help())).unwrap_or_default(),
            }
        })
        .collect();
    out.push(CommandSchema {
        path: path.clone(),
        about: text(cmd.get_about()),
        has_subcommands: cmd.has_subcommands(),
        args,
    });
    // Not clap's generated `help` subcommand (building adds it); it configures nothing.
    let generated_help =
        |sub: &clap::Command| sub.get_name() == "help" && !cmd.is_disable_help_subcommand_set();
    for sub in cmd.get_subcommands().filter(|s| !generated_help(s)) {
        path.push(sub.get_name().to_string());
        collect(sub, path, deprecated, out);
        path.pop();
    }
}

/// Points every argument whose variable is only set under an old name at that name: a
/// deprecated name with a warning on stderr, a seed name with a line at info level (through
/// `tracing`: binaries initialise it before parsing). When both are set, the current one wins;
/// the old one is reported as ignored (a warning, unless a seed name has the same value).
pub fn apply_deprecated_env(mut cmd: clap::Command, deprecated: &[DeprecatedEnv]) -> clap::Command {
    for d in deprecated {
        let Some(old) = std::env::var_os(d.old) else {
            continue;
        };
        match (std::env::var_os(d.new), d.kind) {
            (Some(new), OldName::Seed) if new == old => {}
            (Some(_), OldName::Seed) => eprintln!(
                "warning: {} is ignored because {} is set (the prefixed name wins)",
                d.old, d.new
            ),
            (Some(_), OldName::Deprecated) => eprintln!(
                "warning: {} is ignored because {} is set (the old name is deprecated)",
                d.old, d.new
            ),
            (None, OldName::Seed) => {
                tracing::info!(
                    "{} (the seed's name) read as {}, its canonical spelling",
                    d.old,
                    d.new
                );
                cmd = repoint(cmd, d);
            }
            (None, OldName::Deprecated) => {
                eprintln!("warning: {} is deprecated; set {} instead", d.old, d.new);
                cmd = repoint(cmd, d);
            }
        }
    }
    cmd
}

fn repoint(cmd: clap::Command, d: &DeprecatedEnv) -> clap::Command {
    cmd.mut_args(|a| {
        if a.get_env() == Some(OsStr::new(d.new)) {
            a.env(d.old)
        } else {
            a
        }
    })
    .mut_subcommands(|sub| repoint(sub, d))
}

/// What a binary's `main` calls instead of `P::parse()`: prints the schema and exits when the
/// first argument is [`FLAG`], honours `deprecated` names, then parses (exiting with clap's
/// usage message on an error, like `P::parse()`).
pub fn parse<P: clap::Parser>(deprecated: &[DeprecatedEnv]) -> P {
    let cmd = P::command();
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new(FLAG)) {
        let json =
            serde_json::to_string_pretty(&schema(&cmd, deprecated)).expect("a schema serializes");
        println!("{json}");
        std::process::exit(0);
    }
    let mut cmd = apply_deprecated_env(cmd, deprecated);
    let mut matches = cmd.get_matches_mut();
    P::from_arg_matches_mut(&mut matches)
        .map_err(|e| e.format(&mut cmd))
        .unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// A test binary.
    #[derive(clap::Parser)]
    #[command(name = "demo", about = "Demo binary")]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        /// Runs it.
        Run {
            /// Address to listen on.
            #[arg(long, env = "DEMO_LISTEN", default_value = "127.0.0.1:1")]
            listen: String,
            /// How many to keep.
            #[arg(long, env = "DEMO_KEEP", default_value_t = 3)]
            keep: u32,
            /// Also check.
            #[arg(long)]
            check: bool,
        },
    }

    #[test]
    fn schema_lists_every_argument_of_every_subcommand() {
        let deprecated = [
            DeprecatedEnv {
                old: "KEEP",
                new: "DEMO_KEEP",
                kind: OldName::Deprecated,
            },
            DeprecatedEnv {
                old: "LISTEN",
                new: "DEMO_LISTEN",
                kind: OldName::Seed,
            },
        ];
        let s = schema(&Cli::command(), &deprecated);
        assert_eq!(s.bin, "demo");
        let paths: Vec<Vec<String>> = s.commands.iter().map(|c| c.path.clone()).collect();
        assert_eq!(paths, [vec![], vec!["run".to_string()]]);
        assert!(s.commands[0].has_subcommands && s.commands[0].args.is_empty());
        let run = &s.commands[1];
        let ids: Vec<&str> = run.args.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["listen", "keep", "check"], "no --help");
        let keep = &run.args[1];
        assert_eq!(keep.env.as_deref(), Some("DEMO_KEEP"));
        assert_eq!(keep.default, ["3"]);
        assert_eq!(keep.deprecated_env, ["KEEP"]);
        assert!(keep.alias_env.is_empty());
        assert!(keep.help.starts_with("How many to keep"), "{}", keep.help);
        assert_eq!(run.args[0].long.as_deref(), Some("listen"));
        assert!(run.args[0].deprecated_env.is_empty());
        assert_eq!(run.args[0].alias_env, ["LISTEN"]);
        // A switch's implied default is filled in.
        assert_eq!(run.args[2].default, ["false"]);
        let json = serde_json::to_string(&s).expect("serializes");
        let back: Schema = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, s);
    }
}
