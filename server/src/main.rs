//! The `postern` binary. (Placeholder until the server lands.)
fn main() {}
