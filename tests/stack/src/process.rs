//! Ports, temporary directories and child processes that clean up after themselves.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const PORT_LO: u32 = 20000;
const PORT_SPAN: u32 = 40000; // 20000..60000

/// A loopback port that no other caller in this process has been given, and that is bindable on
/// 127.0.0.1 for both TCP and UDP right now.
///
/// Tests of one process run in parallel threads, so ports come from a process-global counter
/// (never the same port twice in a process); the counter starts at an offset derived from the pid
/// so that test processes running side by side (other worktrees, other crates) start far apart.
pub fn free_port() -> u16 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new((std::process::id().wrapping_mul(7919)) % PORT_SPAN));
    for _ in 0..PORT_SPAN {
        let port = (PORT_LO + next.fetch_add(1, Ordering::Relaxed) % PORT_SPAN) as u16;
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        // Both must bind: the DNS server uses one port for UDP and TCP, and a TCP-only check
        // could hand out a port some other process holds over UDP.
        if TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORT_LO}..{}", PORT_LO + PORT_SPAN);
}

/// A temporary directory, removed on drop unless `ACME_RS_KEEP_TMP=1`.
///
/// It is made world-traversable (0755): Apache's workers run as www-data and read files in it.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Creates `/tmp/acme-rs-<prefix>-XXXXXX`.
    pub fn new(prefix: &str) -> Result<TestDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("acme-rs-{prefix}-"))
            .tempdir()
            .context("creating a temporary directory")?;
        let path = dir.path().to_path_buf();
        set_mode(&path, 0o755)?;
        Ok(TestDir { dir: Some(dir), path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var("ACME_RS_KEEP_TMP").as_deref() == Ok("1") {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("ACME_RS_KEEP_TMP=1: keeping {}", kept.display());
            }
        }
        // Otherwise tempfile::TempDir removes it.
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// A child process that is stopped (SIGTERM, then SIGKILL after a grace period) and reaped when
/// dropped, with its stdout and stderr going to a log file.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
    grace: Duration,
    status: Option<ExitStatus>,
    /// For [`ChildGuard::spawn_group`]: the watchdog that kills the group if we die.
    watchdog: Option<Child>,
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// All children are forked from one thread that lives as long as the process.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process:
/// a child spawned from a test's (or a tokio worker's) thread would be killed as soon as that
/// thread ends, e.g. with a stack shared between tests. Forking from a thread that never ends
/// makes the signal mean what we want: "the test process died".
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("acme-rs-stack-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the spawner thread");
        Mutex::new(tx)
    })
}

impl ChildGuard {
    /// Spawns `cmd` with stdin from /dev/null and stdout+stderr appended to `log_path`.
    pub fn spawn(name: &str, cmd: Command, log_path: &Path) -> Result<ChildGuard> {
        Self::spawn_inner(name, cmd, log_path, false)
    }

    /// Like [`ChildGuard::spawn`], for a program that forks children of its own (Apache): it
    /// runs in a process group of its own, which is killed whole when the guard stops it.
    ///
    /// `PR_SET_PDEATHSIG` is not inherited by grandchildren, and Apache's workers outlive a
    /// killed parent (holding its ports), so a small watchdog (`sh`, in the same group) kills
    /// the group if the test process dies without dropping the guard.
    pub fn spawn_group(name: &str, cmd: Command, log_path: &Path) -> Result<ChildGuard> {
        Self::spawn_inner(name, cmd, log_path, true)
    }

    fn spawn_inner(name: &str, mut cmd: Command, log_path: &Path, group: bool) -> Result<ChildGuard> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl and setpgid are async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if group && libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let program = format!("{:?}", cmd.get_program());
        let child = spawn_from_spawner(cmd).with_context(|| format!("starting {name} ({program})"))?;
        let mut guard = ChildGuard {
            name: name.to_string(),
            child: Some(child),
            log_path: log_path.to_path_buf(),
            grace: Duration::from_secs(3),
            status: None,
            watchdog: None,
        };
        if group {
            let pgid = guard.pid() as libc::pid_t;
            let mut wd = Command::new("/bin/sh");
            // Polls the test process; once it is gone, kills the whole group (itself included).
            // (dash's kill takes `-9 -PGID`, not `-KILL -- -PGID`.)
            wd.arg("-c")
                .arg(format!(
                    "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 -{pgid}",
                    me = std::process::id()
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: setpgid is async-signal-safe.
            unsafe {
                wd.pre_exec(move || {
                    if libc::setpgid(0, pgid) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            guard.watchdog = Some(spawn_from_spawner(wd).context("starting the process-group watchdog")?);
        }
        Ok(guard)
    }

    /// How long `stop` waits after SIGTERM before SIGKILL (default 3 s).
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (of the last process, after it stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.status = child.try_wait().ok().flatten();
            }
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Fails with the log if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_wait() {
            bail!("{} exited ({status}); its output:\n{}", self.name, self.log());
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (no-op once the process has been reaped).
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.is_running() {
            // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
            unsafe {
                libc::kill(self.pid() as libc::pid_t, sig);
            }
        }
    }

    /// SIGTERM, then SIGKILL after the grace period; reaps the process and returns its status.
    /// For a group ([`ChildGuard::spawn_group`]), whatever is left of the group is then killed.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.child.as_ref()?;
        self.stop_leader();
        if let Some(mut wd) = self.watchdog.take() {
            // SAFETY: kill(2) on the group we created; the watchdog (our child, not yet reaped)
            // keeps the group id from being reused.
            unsafe {
                libc::kill(-(self.pid() as libc::pid_t), libc::SIGKILL);
            }
            let _ = wd.wait();
        }
        self.status
    }

    fn stop_leader(&mut self) {
        if self.try_wait().is_none() {
            self.signal(libc::SIGTERM);
            if self.wait_timeout(self.grace).is_none() {
                self.signal(libc::SIGKILL);
                if let Some(child) = self.child.as_mut() {
                    self.status = child.wait().ok();
                }
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_from_spawner(cmd: Command) -> std::io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner().lock().unwrap().send((cmd, tx)).expect("spawner thread gone");
    rx.recv().expect("spawner thread gone")
}

/// Writes `contents` to `path` (creating or truncating it).
pub(crate) fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    use std::io::Write;
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_ref())?;
    Ok(())
}

/// 32 random bytes from the kernel.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut buf = [0u8; N];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf
}
