//! Start a `chatmesh` node process for a test.
