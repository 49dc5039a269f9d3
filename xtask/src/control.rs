//! How `cargo xtask drill` asks a running `cargo xtask run` to start a service again: a unix
//! socket in the run directory, [`SOCKET`]. The service is started by `run` itself, so it
//! stays `run`'s child and Ctrl-C still stops it.
//!
//! One request per connection: the line `start NAME`; the answer, once the service has been
//! started (or failed to), is the line `ok` or `error: WHY`. The socket is created with the
//! process's umask in a directory root owns, so only root can connect (as only root could
//! write the control files this replaces).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// The control socket's name in the run directory.
pub const SOCKET: &str = "control.sock";
/// How long a drill waits for `run` to start a service (ready included) and answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest request line read; a longer one is refused.
const MAX_REQUEST_BYTES: u64 = 256;

/// A drill's request to start `service` again; [`Request::answer`] replies once it is done.
pub struct Request {
    /// The service to start (a name of the stack).
    pub service: String,
    reply: UnixStream,
}

impl Request {
    /// Tells the drill how the start went. A drill that has gone away is not an error.
    pub fn answer(mut self, result: &Result<()>) {
        let line = match result {
            Ok(()) => "ok\n".to_string(),
            // One line, whatever the error's chain holds.
            Err(e) => format!("error: {}\n", format!("{e:#}").replace('\n', " ")),
        };
        let _ = self.reply.write_all(line.as_bytes());
    }
}

fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET)
}

/// Listens on `run_dir`'s control socket (replacing a stale one): a thread accepts
/// connections and sends each well-formed request on the returned channel; a malformed one
/// is answered with an error and closed.
pub fn listen(run_dir: &Path) -> Result<Receiver<Request>> {
    let path = socket_path(run_dir);
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    // Owner only, whatever the umask: a request starts and stops the stack's processes.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            match read_request(stream) {
                Ok(request) => {
                    if tx.send(request).is_err() {
                        return; // `run` is stopping.
                    }
                }
                Err((mut stream, why)) => {
                    let _ = writeln!(stream, "error: {why}");
                }
            }
        }
    });
    Ok(rx)
}

fn read_request(stream: UnixStream) -> std::result::Result<Request, (UnixStream, String)> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let read = stream
        .try_clone()
        .map(|s| BufReader::new(s.take(MAX_REQUEST_BYTES)).read_line(&mut line));
    match (read, line.trim().strip_prefix("start ")) {
        (Ok(Ok(_)), Some(name)) if !name.trim().is_empty() => Ok(Request {
            service: name.trim().to_string(),
            reply: stream,
        }),
        _ => Err((
            stream,
            format!("expected `start NAME`, got {:?}", line.trim()),
        )),
    }
}

/// Asks the `run` whose run directory is `run_dir` to start `name` again, and waits until it
/// has.
pub fn request_start(run_dir: &Path, name: &str) -> Result<()> {
    let path = socket_path(run_dir);
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "connecting to {}: is `cargo xtask run` running with run dir {}?",
            path.display(),
            run_dir.display()
        )
    })?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    writeln!(stream, "start {name}")?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .with_context(|| format!("waiting for `run` to start {name}"))?;
    match answer.trim() {
        "ok" => Ok(()),
        other => bail!("`run` could not start {name}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drill's request reaches `run`, which answers once it has acted; a malformed request
    /// is refused and does not stop the listener.
    #[test]
    fn a_start_request_is_answered_after_run_acts() {
        let dir = std::env::temp_dir().join(format!("xtask-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let requests = listen(&dir).expect("listen");

        let mut bad = UnixStream::connect(socket_path(&dir)).unwrap();
        writeln!(bad, "stop everything").unwrap();
        let mut answer = String::new();
        BufReader::new(&bad).read_line(&mut answer).unwrap();
        assert!(
            answer.starts_with("error: expected `start NAME`"),
            "{answer}"
        );

        let runner = std::thread::spawn(move || {
            let ok = requests.recv().expect("a request");
            assert_eq!(ok.service, "origin-primary");
            ok.answer(&Ok(()));
            let failed = requests.recv().expect("a second request");
            let why = anyhow::anyhow!("no service {}", failed.service);
            failed.answer(&Err(why));
        });
        request_start(&dir, "origin-primary").expect("started");
        let err = request_start(&dir, "nope").expect_err("refused");
        assert!(err.to_string().contains("no service nope"), "{err:#}");
        runner.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
