//! The `spore-agent` binary: started by spore on a target, never by hand.

fn main() {
    spore_agent::Agent::new().run()
}
