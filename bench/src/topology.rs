//! The scenario's topology, as in the Socket.IO peer's `buildTopology`.
//!
//! Client `i` connects to URL `i mod N`; consecutive blocks of `N` clients share a
//! room (`room-{(i / N) mod R}`), so every room has members on every node and its
//! fan-out crosses the broker; publisher `p` is in room `p mod R` and is picked so
//! that publishers alternate nodes. The total rate is split evenly with phases
//! staggered over one period. With `local`, room `r`'s members are all on
//! node `r mod N` instead (rooms are not spread over nodes).

/// One client of the scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientPlan {
    pub id: usize,
    pub url: String,
    pub room: usize,
    /// Set for publishers: index among publishers.
    pub publisher: Option<usize>,
}

/// The whole topology.
#[derive(Debug, Clone)]
pub struct Topology {
    pub clients: Vec<ClientPlan>,
    /// Members per room.
    pub members: Vec<usize>,
    pub publishers: usize,
}

impl Topology {
    pub fn build(
        urls: &[String],
        clients: usize,
        rooms: usize,
        publishers: usize,
        local: bool,
    ) -> Topology {
        let n = urls.len().max(1);
        let rooms = rooms.max(1);
        // Local: the rooms of node k are k, k + n, k + 2n, …
        let per_node = rooms.div_ceil(n).max(1);
        let room_of = |i: usize| {
            if local {
                (((i / n) % per_node) * n + i % n).min(rooms - 1)
            } else {
                (i / n) % rooms
            }
        };
        let mut plans: Vec<ClientPlan> = (0..clients)
            .map(|i| ClientPlan {
                id: i,
                url: urls.get(i % n).cloned().unwrap_or_default(),
                room: room_of(i),
                publisher: None,
            })
            .collect();
        let mut members_of: Vec<Vec<usize>> = vec![Vec::new(); rooms];
        for c in &plans {
            members_of[c.room].push(c.id);
        }
        let mut placed = 0;
        for p in 0..publishers {
            let room = p % rooms;
            let list = &members_of[room];
            if list.is_empty() {
                continue;
            }
            // Same rule as the peer: alternates instances between rooms and rounds.
            let mut k = (room + p / rooms) % list.len();
            // More publishers than members would collide: take the next free one.
            for _ in 0..list.len() {
                if plans[list[k]].publisher.is_none() {
                    break;
                }
                k = (k + 1) % list.len();
            }
            if plans[list[k]].publisher.is_none() {
                plans[list[k]].publisher = Some(placed);
                placed += 1;
            }
        }
        Topology {
            members: members_of.iter().map(Vec::len).collect(),
            clients: plans,
            publishers: placed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_span_every_node_and_publishers_alternate() {
        let urls = vec!["a".to_string(), "b".to_string()];
        let t = Topology::build(&urls, 1000, 10, 10, false);
        assert_eq!(t.members, vec![100; 10]);
        assert_eq!(t.publishers, 10);
        for room in 0..10 {
            let on_a = t
                .clients
                .iter()
                .filter(|c| c.room == room && c.url == "a")
                .count();
            assert_eq!(on_a, 50);
        }
        let pub_urls: Vec<&str> = t
            .clients
            .iter()
            .filter(|c| c.publisher.is_some())
            .map(|c| c.url.as_str())
            .collect();
        assert_eq!(pub_urls.iter().filter(|u| **u == "a").count(), 5);
    }

    #[test]
    fn local_rooms_live_on_one_node_each() {
        let urls = vec!["a".to_string(), "b".to_string()];
        let t = Topology::build(&urls, 1000, 10, 10, true);
        assert_eq!(t.members, vec![100; 10]);
        for c in &t.clients {
            assert_eq!(
                c.url,
                urls[c.room % 2],
                "client {} in room {}",
                c.id,
                c.room
            );
        }
        assert_eq!(t.publishers, 10);
    }
}
