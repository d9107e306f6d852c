//! `exec:CMD`: a macro host in another process (the program on an FPGA host, a board's
//! driver, a simulator), spoken to over its stdin and stdout in the binary protocol of
//! `docs/protocol.md`.
//!
//! Every reply is awaited with a timeout: the pipes are served by two threads (one
//! writes requests, one reads replies), so that a host that stops reading or stops
//! answering is noticed and killed rather than waited on. The child is killed and
//! reaped when the backend is dropped, on every way out of a command.

use super::backend::{MacroBackend, Operation};
use crate::cim::MacroSpec;
use crate::io::checkpoint::{get_str, put_str};
use crate::{Error, Result};
use byteorder::{LittleEndian as LE, ReadBytesExt, WriteBytesExt};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The protocol version this dnat speaks.
pub const PROTOCOL_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"DNATHOST";
const MAX_BODY: u32 = 1 << 30;
/// How much of the host's stderr is kept for error messages.
const STDERR_TAIL: usize = 2048;

const ERROR: u32 = 0;
const HELLO: u32 = 1;
const PROGRAM: u32 = 2;
const COMPUTE: u32 = 3;
const BYE: u32 = 4;

/// A macro host process behind the protocol.
pub struct ExecMacro {
    command: String,
    host: String,
    spec: MacroSpec,
    timeout: Duration,
    child: Child,
    requests: Option<SyncSender<Vec<u8>>>,
    replies: Receiver<std::result::Result<(u32, Vec<u8>), String>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    threads: Vec<JoinHandle<()>>,
    /// Set after the first fault: the session is over.
    broken: bool,
}

impl ExecMacro {
    /// Starts `sh -c command`, says HELLO with the geometry `spec` and checks the host's
    /// answer; every reply is awaited at most `timeout`.
    pub fn start(command: &str, spec: &MacroSpec, timeout: Duration) -> Result<Self> {
        Self::hello(command, spec, timeout)
            .map_err(|e| Error::invalid(format!("backend 'exec:{command}', hello: {e}")))
    }

    fn hello(command: &str, spec: &MacroSpec, timeout: Duration) -> Result<Self> {
        ignore_sigpipe();
        // `exec`: the host is the child itself, not a grandchild under a shell; its own
        // process group: what it starts in turn is killed with it.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {command}"))
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::invalid(format!("cannot start 'sh -c': {e}")))?;
        let (stdin, stdout, err) = (
            child.stdin.take().expect("piped"),
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (req_tx, req_rx) = mpsc::sync_channel::<Vec<u8>>(1);
        let (rep_tx, rep_rx) = mpsc::channel();
        let threads = vec![
            std::thread::spawn(move || write_requests(stdin, req_rx)),
            std::thread::spawn(move || read_replies(stdout, rep_tx)),
            {
                let keep = stderr.clone();
                std::thread::spawn(move || keep_tail(err, keep))
            },
        ];
        let mut m = ExecMacro {
            command: command.into(),
            host: String::new(),
            spec: spec.clone(),
            timeout,
            child,
            requests: Some(req_tx),
            replies: rep_rx,
            stderr,
            threads,
            broken: false,
        };
        let mut hello = MAGIC.to_vec();
        for v in [
            PROTOCOL_VERSION,
            spec.arrays as u32,
            spec.rows as u32,
            spec.columns as u32,
            spec.input_bits,
            spec.input_bits_per_cycle,
            spec.weight_bits,
        ] {
            hello.write_u32::<LE>(v).unwrap();
        }
        hello.write_i32::<LE>(spec.adc.kmin).unwrap();
        hello.write_i32::<LE>(spec.adc.kmax).unwrap();
        hello.write_f32::<LE>(spec.adc.step).unwrap();
        put_str(&mut hello, &spec.name);
        let body = m.request(HELLO, hello)?;
        let mut c = std::io::Cursor::new(&body[..]);
        let mut magic = [0u8; 8];
        let short = |m: &mut Self| m.fault("reply too short".into());
        if c.read_exact(&mut magic).is_err() {
            return Err(short(&mut m));
        }
        if &magic != MAGIC {
            return Err(m.fault(format!("reply magic {magic:?} is not 'DNATHOST'")));
        }
        let Ok(version) = c.read_u32::<LE>() else { return Err(short(&mut m)) };
        if version != PROTOCOL_VERSION {
            return Err(m.fault(format!(
                "the host speaks protocol version {version}, this dnat speaks {PROTOCOL_VERSION}"
            )));
        }
        match get_str(&mut c) {
            Ok(name) if c.position() as usize == body.len() => m.host = name,
            _ => return Err(m.fault("reply is not magic, version and a name".into())),
        }
        Ok(m)
    }

    /// The host's own name for itself (its HELLO reply).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Sends one request and waits for its reply's body.
    fn request(&mut self, tag: u32, body: Vec<u8>) -> Result<Vec<u8>> {
        if self.broken {
            return Err(Error::invalid("the host failed before".to_string()));
        }
        let mut msg = Vec::with_capacity(8 + body.len());
        msg.write_u32::<LE>(tag).unwrap();
        msg.write_u32::<LE>(body.len() as u32).unwrap();
        msg.extend(body);
        let sent = self.requests.as_ref().is_some_and(|r| r.send(msg).is_ok());
        if !sent {
            return Err(self.fault("the host's stdin is closed".into()));
        }
        match self.replies.recv_timeout(self.timeout) {
            Ok(Ok((t, body))) if t == tag => Ok(body),
            Ok(Ok((ERROR, body))) => {
                let msg = String::from_utf8_lossy(&body).into_owned();
                Err(self.fault(format!("the host reports: {msg}")))
            }
            Ok(Ok((t, _))) => Err(self.fault(format!("reply tag {t} to request {tag}"))),
            Ok(Err(e)) => Err(self.fault(e)),
            Err(RecvTimeoutError::Timeout) => Err(self.fault(format!(
                "no reply within {} s (--backend-timeout): the host is killed",
                self.timeout.as_secs_f64()
            ))),
            Err(RecvTimeoutError::Disconnected) => {
                Err(self.fault("the host's stdout is closed".into()))
            }
        }
    }

    /// Ends the session on a fault: the host is killed and reaped, and the error says
    /// what happened, with its exit status and the last lines it wrote to stderr.
    fn fault(&mut self, why: String) -> Error {
        self.broken = true;
        let status = self.stop(Duration::from_millis(200));
        let tail = String::from_utf8_lossy(&self.stderr.lock().unwrap()).trim().to_string();
        let mut msg = why;
        if let Some(s) = status {
            msg.push_str(&format!(" (host {s})"));
        }
        if !tail.is_empty() {
            msg.push_str(&format!("; its stderr ends: {tail}"));
        }
        Error::invalid(msg)
    }

    /// Closes the host's stdin, gives it `grace` to exit, then kills it; reaps it and
    /// the pipe threads. The exit status, when the host had exited by itself.
    fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.requests = None;
        let deadline = std::time::Instant::now() + grace;
        let mut status = None;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if status.is_none() {
            // The whole group, before the host is reaped (its id cannot be reused until
            // then): a host may have started helpers of its own.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        status
    }
}

impl Drop for ExecMacro {
    fn drop(&mut self) {
        if !self.broken && self.requests.is_some() {
            // A polite end; whatever the host answers, it is stopped below.
            let _ = self.request(BYE, Vec::new());
        }
        if !self.threads.is_empty() {
            self.stop(Duration::from_millis(500));
        }
    }
}

impl MacroBackend for ExecMacro {
    fn name(&self) -> String {
        format!("exec:{}", self.command)
    }

    fn program(&mut self, array: usize, weights: &[i8]) -> Result<()> {
        let mut body = Vec::with_capacity(4 + weights.len());
        body.write_u32::<LE>(array as u32).unwrap();
        body.extend(weights.iter().map(|&w| w as u8));
        let reply = self.request(PROGRAM, body)?;
        if !reply.is_empty() {
            return Err(self.fault(format!("a {}-byte reply, not an empty one", reply.len())));
        }
        Ok(())
    }

    fn compute(
        &mut self,
        array: usize,
        op: &Operation,
        inputs: &[u16],
        out: &mut [i32],
    ) -> Result<()> {
        let n = inputs.len() / self.spec.rows;
        let mut body = Vec::with_capacity(72 + 2 * inputs.len());
        debug_assert_eq!(inputs.len(), n * self.spec.rows);
        for v in [
            array as u32,
            n as u32,
            op.layer,
            op.tile,
            op.cycle,
            op.first_channel,
            op.columns,
            op.channels,
        ] {
            body.write_u32::<LE>(v).unwrap();
        }
        for v in [op.elements, op.first_element, op.pass] {
            body.write_u64::<LE>(v).unwrap();
        }
        // As narrow as the geometry allows (docs/protocol.md).
        if self.spec.input_bits_per_cycle <= 8 {
            body.extend(inputs.iter().map(|&q| q as u8));
        } else {
            inputs.iter().for_each(|&q| body.extend(q.to_le_bytes()));
        }
        let reply = self.request(COMPUTE, body)?;
        let cols = op.columns as usize;
        let adc = self.spec.adc;
        let width = if adc.kmin >= i16::MIN as i32 && adc.kmax <= i16::MAX as i32 { 2 } else { 4 };
        let want = 8 + width * cols * n;
        let head = |i: usize| {
            reply.get(4 * i..4 * i + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        };
        if reply.len() != want || head(0) != Some(n as u32) || head(1) != Some(cols as u32) {
            let said = match (head(0), head(1)) {
                (Some(a), Some(b)) => format!("{a} operations × {b} columns"),
                _ => "no header".into(),
            };
            return Err(self.fault(format!(
                "a {}-byte reply ({said}) to {n} operations × {cols} columns ({want} bytes)",
                reply.len()
            )));
        }
        if width == 2 {
            for (o, b) in out.iter_mut().zip(reply[8..].chunks_exact(2)) {
                *o = i16::from_le_bytes(b.try_into().unwrap()) as i32;
            }
        } else {
            for (o, b) in out.iter_mut().zip(reply[8..].chunks_exact(4)) {
                *o = i32::from_le_bytes(b.try_into().unwrap());
            }
        }
        Ok(())
    }
}

/// A host that exits early closes the pipe dnat writes its requests into: that must be
/// an error on the write (reported with the host's exit status), not SIGPIPE killing
/// dnat, which `dnat`'s start-up restores to the default action for `dnat … | head`.
fn ignore_sigpipe() {
    #[cfg(target_os = "linux")]
    {
        unsafe extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIG_IGN: usize = 1;
        // SAFETY: sets one signal's action; no handler runs Rust code.
        unsafe {
            signal(SIGPIPE, SIG_IGN);
        }
    }
}

fn write_requests(stdin: ChildStdin, requests: Receiver<Vec<u8>>) {
    let mut w = BufWriter::with_capacity(1 << 20, stdin);
    for msg in requests {
        if w.write_all(&msg).and_then(|_| w.flush()).is_err() {
            return;
        }
    }
}

fn read_replies(stdout: impl Read, replies: Sender<std::result::Result<(u32, Vec<u8>), String>>) {
    let mut r = BufReader::with_capacity(1 << 20, stdout);
    loop {
        let mut head = [0u8; 8];
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                let _ = replies.send(Err("the host closed its stdout (exited?)".into()));
                return;
            }
            Err(e) => {
                let _ = replies.send(Err(format!("reading the host's stdout: {e}")));
                return;
            }
        }
        let tag = u32::from_le_bytes(head[..4].try_into().unwrap());
        let len = u32::from_le_bytes(head[4..].try_into().unwrap());
        if len > MAX_BODY {
            let _ = replies.send(Err(format!("a reply of {len} bytes (at most 2^30)")));
            return;
        }
        let mut body = vec![0u8; len as usize];
        if let Err(e) = r.read_exact(&mut body) {
            let _ = replies.send(Err(format!("a reply cut short after its header: {e}")));
            return;
        }
        if replies.send(Ok((tag, body))).is_err() {
            return;
        }
    }
}

fn keep_tail(mut stderr: impl Read, tail: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf) {
        if n == 0 {
            return;
        }
        let mut t = tail.lock().unwrap();
        t.extend(&buf[..n]);
        let excess = t.len().saturating_sub(STDERR_TAIL);
        t.drain(..excess);
    }
}
