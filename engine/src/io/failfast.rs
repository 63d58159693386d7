//! A shard that fails ends the process. The shards share nothing but the mesh, so one that
//! panicked leaves the others serving a broker with a hole in it: sessions homed on the dead
//! shard unreachable, messages routed to it lost, its log no longer written. Nothing short
//! of a restart repairs that, and a restart is what a supervisor does when the process
//! exits: the logs recover what was acknowledged. So the binary installs [`exit_on_panic`]
//! before starting the broker, and any panic, on any thread, ends the process at once.

/// The exit code after a panic (the one Rust uses when `main` panics).
pub const PANIC_EXIT_CODE: i32 = 101;

/// Installs a panic hook that prints the panic as usual (thread name, location, message)
/// and then ends the process with [`PANIC_EXIT_CODE`] without unwinding, joining the other
/// threads or running exit handlers. Meant for the `shardmq` binary; an embedder that wants
/// another policy leaves it out.
pub fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!(
            "shardmq: fatal: a thread panicked; exiting with code {PANIC_EXIT_CODE} so that \
             a supervisor restarts the broker (the log recovers acknowledged messages)"
        );
        // SAFETY: _exit(2) ends the process immediately. It runs no atexit handlers and no
        // destructors, which the other shard threads may still be using; stderr is
        // unbuffered, so the message above is already written.
        unsafe { libc::_exit(PANIC_EXIT_CODE) }
    }));
}
