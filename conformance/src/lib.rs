//! Conformance suites for postern. (Placeholder until the runner lands.)
