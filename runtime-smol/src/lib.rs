//! Drives [`proto_core::Session`] over smol sockets. (Placeholder until the driver lands.)
