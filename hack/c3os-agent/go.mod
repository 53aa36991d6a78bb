module capi-c3os.local/c3os-agent

go 1.26
