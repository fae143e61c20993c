# Titan developer entry points.
.PHONY: build test cluster-start cluster-stop cluster-status chaos-demo

build:
	cargo build --release -p titan-server --bin titan-server

test:
	cargo test -p titan-server

cluster-start: build
	scripts/cluster.sh start

cluster-stop:
	scripts/cluster.sh stop

cluster-status:
	scripts/cluster.sh status

chaos-demo: build
	scripts/chaos-demo.sh
