//! The floor in Rust, std only, for `bench.py`: the same minimal PATCHes as the Python
//! floor, over LXD's Unix socket, one blocking keep-alive connection per thread. Its CPU
//! per instance is what one request costs a client that does nothing else: the yardstick
//! for the controller's own CPU per instance.
//!
//!     floor SOCKET PROJECT CONNECTIONS < lines of "instance<TAB>json body"
//!
//! Prints the seconds the PATCHes took; exits non-zero on any answer that is not 2xx.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

fn patch(conn: &mut BufReader<UnixStream>, path: &str, body: &str) -> Result<(), String> {
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: lxd\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let io = |e: std::io::Error| format!("{path}: {e}");
    let stream = conn.get_mut();
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(body.as_bytes()).map_err(io)?;
    let mut line = String::new();
    conn.read_line(&mut line).map_err(io)?;
    let code: u16 = (line.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{path}: not an HTTP answer: {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line).map_err(io)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().map_err(|_| format!("{path}: bad length {v:?}"))?;
        }
    }
    let mut answer = vec![0; length];
    conn.read_exact(&mut answer).map_err(io)?;
    if !(200..300).contains(&code) {
        return Err(format!("{path}: {code} {}", String::from_utf8_lossy(&answer)));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, project, connections] = args.as_slice() else {
        eprintln!("usage: floor SOCKET PROJECT CONNECTIONS < instance<TAB>body lines");
        return ExitCode::FAILURE;
    };
    let Ok(connections) = connections.parse::<usize>() else {
        eprintln!("CONNECTIONS must be a number");
        return ExitCode::FAILURE;
    };
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("stdin: {e}");
        return ExitCode::FAILURE;
    }
    let jobs: Vec<(&str, &str)> = input.lines().filter_map(|l| l.split_once('\t')).collect();
    let started = std::time::Instant::now();
    let failed = std::thread::scope(|s| {
        let workers: Vec<_> = (0..connections.max(1))
            .map(|k| {
                let jobs = &jobs;
                s.spawn(move || -> Result<(), String> {
                    let stream = UnixStream::connect(socket).map_err(|e| format!("{socket}: {e}"))?;
                    let mut conn = BufReader::new(stream);
                    for (name, body) in jobs.iter().skip(k).step_by(connections.max(1)) {
                        patch(&mut conn, &format!("/1.0/instances/{name}?project={project}"), body)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| match w.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("a connection's thread panicked".to_string()),
            })
            .next()
    });
    if let Some(e) = failed {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    println!("{}", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
