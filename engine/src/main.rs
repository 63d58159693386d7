fn main() {
    let h = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(|| async move {
            let l = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            println!("bound {:?}", l.local_addr());
        })
        .unwrap();
    h.join().unwrap();
}
