//! Start real `redis-server` processes for tests.
