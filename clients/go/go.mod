module datamiddleware/clients/go

go 1.19
