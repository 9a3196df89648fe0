use herald::Event;

#[derive(Event)]
struct Plain {
    id: u64,
}

fn main() {}
