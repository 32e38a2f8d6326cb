// Command probe is the local cluster's test image: an HTTP server, and a client for DNS and
// HTTP checks from inside pods (the VM's busybox wget crashes, and images carry no shell).
//
//	probe serve [-addr :8080]   answer GET / with "probe <hostname> <version>", /healthz with "ok"
//	probe lookup NAME           print NAME's addresses
//	probe get URL               print URL's body; exit 1 unless the status is 200
//	probe test URL              like get, retried for up to a minute (a Helm test hook)
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: probe serve|lookup NAME|get URL|test URL")
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "lookup":
		lookup(arg())
	case "get":
		if err := get(arg()); err != nil {
			fail(err.Error())
		}
	case "test":
		var err error
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
			if err = get(arg()); err == nil {
				return
			}
			time.Sleep(time.Second)
		}
		fail(err.Error())
	default:
		fail("unknown command " + os.Args[1])
	}
}

func arg() string {
	if len(os.Args) < 3 {
		fail("missing argument")
	}
	return os.Args[2]
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, message)
	os.Exit(1)
}

func serve(args []string) {
	flags := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := flags.String("addr", ":8080", "listen address")
	_ = flags.Parse(args)
	host, _ := os.Hostname()
	version := os.Getenv("PROBE_VERSION")
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "probe %s %s\n", host, version)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	server := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
		<-signals
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = server.Shutdown(ctx)
	}()
	fmt.Printf("probe serving on %s\n", *addr)
	if err := server.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		fail(err.Error())
	}
}

func lookup(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		fail(err.Error())
	}
	for _, addr := range addrs {
		fmt.Println(addr)
	}
}

func get(url string) error {
	client := &http.Client{Timeout: 10 * time.Second}
	response, err := client.Get(url)
	if err != nil {
		return err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		return err
	}
	if response.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, response.Status)
	}
	fmt.Print(string(body))
	return nil
}
