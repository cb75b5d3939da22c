//! The task supervisor on its own, for the agent's tests; the shipped
//! binary runs the same code as `gantry supervise`.

fn main() {
    std::process::exit(gantry_agent::supervisor::main());
}
