//! A WebSocket test client speaking protocol v1.
