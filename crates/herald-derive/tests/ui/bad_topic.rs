use herald::Event;

#[derive(Event)]
enum Bad {
    #[event(name = "Not Valid")]
    One,
}

fn main() {}
