package dmw_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"time"

	dmw "datamiddleware/clients/go"
)

func ExampleDial() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dmw.Dial(ctx, "127.0.0.1:7070", dmw.Options{ClientName: "game-1"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Put(ctx, "default", "players", "42", json.RawMessage(`{"name":"Aria","gold":100}`)); err != nil {
		log.Fatal(err)
	}
	doc, err := c.Incr(ctx, "default", "players", "42", "/gold", -30, dmw.AtLeast(0))
	if errors.Is(err, dmw.ErrBoundViolation) {
		log.Print("not enough gold")
	}
	doc, err = c.Get(ctx, "default", "players", "42")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(doc.Version, string(doc.Value)) // 2 {"name":"Aria","gold":70}
}
