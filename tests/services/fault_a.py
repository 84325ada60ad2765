from ._fault import make_service

app, bus = make_service("fault_a")
