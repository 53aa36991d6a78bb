// c3os-agent: the host side of self-enrolling bare metal (README "Enrolled hosts").
//
// It runs on the registration live image of a host without a BMC: gathers the host's
// hardware facts from /proc and /sys, registers them with the site's registration
// token over HTTPS (pinning the site's CA), then polls its assignment with the
// credential it got and does what it says: nothing (wait), install c3os (install),
// keep running (run) or wipe what a released machine installed (reset), reporting
// progress. It only connects out; nothing connects to the host.
//
//	c3os-agent --url https://enroll.example:9445 --namespace edge --pool shop-floor \
//	    --token-file /run/c3os/token --ca-file /run/c3os/ca.crt
//	c3os-agent facts [--root DIR]      # print the facts it would register, as JSON
//
// Standard library only, built static (CGO_ENABLED=0) so it runs on any live image.
// The token and the credential are never printed, nor passed to the commands it runs.
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// The commands of a real Kairos image (kairos-agent v2.31.4):
//
//   - install: `kairos-agent manual-install --device <disk> <config>` (main.go
//     "manual-install", internal/agent/install.go ManualInstall): installs the running
//     live system onto the disk with our cloud-config, which it keeps in /oem. With no
//     --source it installs the live image itself; `--source oci:<ref>` would install
//     another (the assignment's image is in $C3OS_IMAGE_URL for a wrapper that wants it).
//   - reset: `kairos-agent reset --unattended --reset-oem` (main.go "reset",
//     internal/agent/reset.go Reset): formats the persistent partition by default
//     (pkg/config/spec.go NewResetSpec) and, with --reset-oem, the OEM partition that
//     holds the old cluster's cloud-config (bootstrap tokens) too. It resets from the
//     recovery system only: from the active system Kairos selects the "statereset"
//     boot entry and reboots (internal/phonehome/handlers.go handleReset), so a real
//     image runs this agent in that boot to report reset-done after the wipe.
const (
	defaultInstall = "kairos-agent manual-install --device {disk} {config}"
	defaultReset   = "kairos-agent reset --unattended --reset-oem"
	defaultReboot  = "reboot"
)

type options struct {
	url, namespace, pool string
	tokenFile, caFile    string
	stateDir, root       string
	install, reset       string
	reboot               string
	maxPoll              time.Duration
}

type agent struct {
	opts   options
	client *client
	st     state
	last   string // the last assignment logged, to log changes only
}

func main() {
	log.SetFlags(log.LstdFlags | log.LUTC)
	log.SetPrefix("c3os-agent: ")
	if len(os.Args) > 1 && os.Args[1] == "facts" {
		os.Exit(printFacts(os.Args[2:]))
	}
	var o options
	var pollSeconds int
	flags := flag.NewFlagSet("c3os-agent", flag.ExitOnError)
	flags.StringVar(&o.url, "url", "", "the site's enrollment endpoint, https://host[:port]")
	flags.StringVar(&o.namespace, "namespace", "", "namespace of the site's C3osCluster")
	flags.StringVar(&o.pool, "pool", "", "the pool to register into (sites[].enrolled.pool)")
	flags.StringVar(&o.tokenFile, "token-file", "", "file holding the registration token")
	flags.StringVar(&o.caFile, "ca-file", "", "the endpoint's CA (ca.crt of capi-c3os-enrollment-ca), the only trusted root")
	flags.StringVar(&o.stateDir, "state-dir", "/usr/local/.c3os-agent", "where the credential is kept (0700; a persistent path on Kairos)")
	flags.StringVar(&o.root, "root", "/", "where /proc and /sys are (tests: a fake tree)")
	flags.StringVar(&o.install, "install-command", defaultInstall, "installer, split on spaces; {disk} {config} {metadata} {image} {id} replaced")
	flags.StringVar(&o.reset, "reset-command", defaultReset, "reset command, split on spaces; {id} replaced")
	flags.StringVar(&o.reboot, "reboot-command", defaultReboot, "run after an install or reset; empty: exit after an install instead")
	flags.IntVar(&pollSeconds, "poll-seconds", 0, "poll at least this often (0: as the endpoint says)")
	flags.Parse(os.Args[1:])
	for name, value := range map[string]string{"url": o.url, "namespace": o.namespace, "pool": o.pool, "token-file": o.tokenFile, "ca-file": o.caFile} {
		if value == "" {
			log.Fatalf("--%s is required", name)
		}
	}
	o.maxPoll = time.Duration(pollSeconds) * time.Second
	cl, err := newClient(o.url, o.caFile)
	if err != nil {
		log.Fatal(err)
	}
	st, err := loadState(o.stateDir)
	if err != nil {
		log.Fatalf("reading the state in %s: %v", o.stateDir, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	a := &agent{opts: o, client: cl, st: st}
	if err := a.run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
}

func printFacts(args []string) int {
	flags := flag.NewFlagSet("c3os-agent facts", flag.ExitOnError)
	root := flags.String("root", "/", "where /proc and /sys are")
	flags.Parse(args)
	hw, err := gatherHardware(*root)
	out, _ := json.MarshalIndent(hw, "", "  ")
	fmt.Println(string(out))
	if err != nil {
		log.Print(err)
		return 1
	}
	return 0
}

// poll is the pause between two requests: the endpoint's, capped by --poll-seconds.
func (a *agent) poll(seconds int) time.Duration {
	wait := time.Duration(max(seconds, 1)) * time.Second
	if a.opts.maxPoll > 0 && wait > a.opts.maxPoll {
		wait = a.opts.maxPoll
	}
	return wait
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// pause waits after a failed request: as the endpoint asks (429/503) or a poll.
func (a *agent) pause(ctx context.Context, err error) error {
	var later retryLater
	if errors.As(err, &later) {
		return sleep(ctx, later.after)
	}
	return sleep(ctx, a.poll(15))
}

func (a *agent) run(ctx context.Context) error {
	if a.st.Installed != "" {
		if liveBoot(a.opts.root) {
			// Not the installed system: the firmware booted the registration image again.
			log.Printf("claim %s is installed, but this is the registration image again: make the host boot its install disk first", a.st.Installed)
		} else if err := a.reportBooted(ctx); err != nil {
			return err
		}
	}
	for {
		if a.st.Credential == "" {
			if err := a.register(ctx); err != nil {
				return err
			}
		}
		next, err := a.client.assignment(a.st.Namespace, a.st.Name, a.st.Credential)
		if errors.Is(err, errRefused) {
			// Registered again elsewhere, or the C3osHost was deleted: the token decides.
			log.Printf("the credential of %s/%s was refused; registering again", a.st.Namespace, a.st.Name)
			a.forget()
			continue
		}
		if err != nil {
			log.Printf("asking for the assignment: %v", err)
			if err := a.pause(ctx, err); err != nil {
				return err
			}
			continue
		}
		a.logChange(next)
		switch next.Action {
		case "install":
			if next.ID == a.st.Installed {
				break // installed already (see above): never a second install of one claim unasked
			}
			done, err := a.install(ctx, next)
			if err != nil {
				return err
			}
			if done {
				return a.rebootOrExit()
			}
		case "reset":
			if err := a.resetHost(ctx, next); err != nil {
				return err
			}
		}
		if err := sleep(ctx, a.poll(next.PollSeconds)); err != nil {
			return err
		}
	}
}

func (a *agent) logChange(next assignment) {
	what := next.Action + " " + next.Reason + " " + next.ID
	if what != a.last {
		log.Printf("assignment: %s", strings.Join(strings.Fields(what), " "))
		a.last = what
	}
}

func (a *agent) forget() {
	a.st.Credential = ""
	if err := a.st.save(a.opts.stateDir); err != nil {
		log.Printf("saving the state: %v", err)
	}
}

// register sends the facts with the token until the endpoint takes them, then keeps
// the credential (0600) before using it.
func (a *agent) register(ctx context.Context) error {
	for {
		err := a.registerOnce()
		if err == nil {
			return nil
		}
		if errors.Is(err, errRefused) {
			log.Printf("registration into %s/%s refused: the token is not valid there (wrong, rotated out or revoked), or no site names the pool", a.opts.namespace, a.opts.pool)
		} else {
			log.Printf("registering: %v", err)
		}
		if err := a.pause(ctx, err); err != nil {
			return err
		}
	}
}

func (a *agent) registerOnce() error {
	hw, err := gatherHardware(a.opts.root)
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(a.opts.tokenFile)
	if err != nil {
		return fmt.Errorf("reading the token file: %w", err) // the path only, never the content
	}
	answer, err := a.client.register(a.opts.namespace, a.opts.pool, strings.TrimSpace(string(raw)), hw)
	if err != nil {
		return err
	}
	a.st.Namespace, a.st.Name, a.st.Credential = answer.Namespace, answer.Name, answer.Credential
	if err := a.st.save(a.opts.stateDir); err != nil {
		return fmt.Errorf("saving the credential: %w", err)
	}
	accepted := "accepted"
	if !answer.Accepted {
		accepted = "awaiting approval (spec.accepted)"
	}
	log.Printf("registered as C3osHost %s/%s with %d disks and %d NICs, %s", answer.Namespace, answer.Name, len(hw.Disks), len(hw.NICs), accepted)
	return nil
}

// report sends one report, again after transient failures and a new registration;
// a 409 (the claim or reset is gone, or the event does not fit) comes back as errStale.
func (a *agent) report(ctx context.Context, event, id, message string) error {
	for {
		if a.st.Credential == "" {
			if err := a.register(ctx); err != nil {
				return err
			}
		}
		err := a.client.report(a.st.Namespace, a.st.Name, a.st.Credential, event, id, message)
		if err == nil {
			log.Printf("reported %s for %s", event, id)
			return nil
		}
		var stale errStale
		if errors.As(err, &stale) {
			return err
		}
		if errors.Is(err, errRefused) {
			a.forget()
			continue
		}
		log.Printf("reporting %s: %v", event, err)
		if err := a.pause(ctx, err); err != nil {
			return err
		}
	}
}

func (a *agent) reportBooted(ctx context.Context) error {
	id := a.st.Installed
	err := a.report(ctx, "booted", id, "")
	var stale errStale
	if errors.As(err, &stale) {
		// The install's own report may not have gone out before the reboot.
		if err = a.report(ctx, "installed", id, ""); err == nil {
			err = a.report(ctx, "booted", id, "")
		}
	}
	if errors.As(err, &stale) {
		log.Printf("claim %s is not this host's any more: %v", id, err)
		err = nil
	}
	if err != nil {
		return err
	}
	a.st.Installed = ""
	return a.st.save(a.opts.stateDir)
}

// install runs the installer for the assignment; true once the installer succeeded and
// the endpoint knows (the host reboots into the installed system then).
func (a *agent) install(ctx context.Context, next assignment) (bool, error) {
	spec := next.Install
	if spec == nil || spec.Disk == "" {
		return false, nil
	}
	if !exists(a.opts.root, filepath.Join("sys/block", filepath.Base(spec.Disk))) {
		err := a.report(ctx, "no-matching-disk", next.ID, fmt.Sprintf("install disk %s not found on this host", spec.Disk))
		return false, ignoreStale(err)
	}
	if err := a.report(ctx, "installing", next.ID, "installing onto "+spec.Disk); err != nil {
		return false, ignoreStale(err)
	}
	userData, err := base64.StdEncoding.DecodeString(spec.UserData)
	if err != nil {
		return false, ignoreStale(a.report(ctx, "install-failed", next.ID, "the assignment's user data is not base64"))
	}
	// Bootstrap data holds the cluster's secrets: a private directory, gone afterwards.
	dir, err := os.MkdirTemp(a.opts.stateDir, "install-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(dir)
	config, metadata := filepath.Join(dir, "cloud-config.yaml"), filepath.Join(dir, "meta-data.json")
	meta, _ := json.Marshal(spec.MetaData)
	for path, data := range map[string][]byte{config: userData, metadata: meta} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return false, err
		}
	}
	replace := map[string]string{"{disk}": spec.Disk, "{config}": config, "{metadata}": metadata, "{image}": spec.Image.URL, "{id}": next.ID}
	env := []string{
		"C3OS_CLAIM_ID=" + next.ID, "C3OS_INSTALL_DISK=" + spec.Disk, "C3OS_CLOUD_CONFIG=" + config,
		"C3OS_META_DATA=" + metadata, "C3OS_IMAGE_URL=" + spec.Image.URL,
		"C3OS_IMAGE_CHECKSUM=" + spec.Image.Checksum, "C3OS_IMAGE_FORMAT=" + spec.Image.Format,
	}
	log.Printf("installing claim %s onto %s", next.ID, spec.Disk)
	if err := runCommand(ctx, a.opts.install, replace, env); err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		log.Printf("install failed: %v", err)
		return false, ignoreStale(a.report(ctx, "install-failed", next.ID, err.Error()))
	}
	// Saved before the report: a host that dies now reports booted (or installed) when
	// it comes up, never installs twice unasked.
	a.st.Installed = next.ID
	if err := a.st.save(a.opts.stateDir); err != nil {
		return false, err
	}
	if err := a.report(ctx, "installed", next.ID, "installed onto "+spec.Disk); err != nil {
		return false, ignoreStale(err)
	}
	return true, nil
}

func ignoreStale(err error) error {
	var stale errStale
	if errors.As(err, &stale) {
		log.Printf("report not taken: %v", err)
		return nil
	}
	return err
}

func (a *agent) resetHost(ctx context.Context, next assignment) error {
	log.Printf("resetting for %s", next.ID)
	if err := runCommand(ctx, a.opts.reset, map[string]string{"{id}": next.ID}, []string{"C3OS_RESET_ID=" + next.ID}); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Nothing to report: the endpoint knows no reset failure. It asks again on the
		// next poll; a host that never manages is marked Lost by the manager.
		log.Printf("reset failed: %v", err)
		return nil
	}
	a.st.Installed = ""
	if err := a.st.save(a.opts.stateDir); err != nil {
		return err
	}
	if err := ignoreStale(a.report(ctx, "reset-done", next.ID, "")); err != nil {
		return err
	}
	if a.opts.reboot != "" {
		// Back into the registration image: the installed system is gone.
		return a.rebootOrExit()
	}
	return nil
}

func (a *agent) rebootOrExit() error {
	if a.opts.reboot == "" {
		log.Printf("done here; the installed system's agent reports it booted")
		return context.Canceled
	}
	log.Printf("rebooting")
	return runCommand(context.Background(), a.opts.reboot, nil, nil)
}

// secretish: a line of a command's output that could carry a secret is not reported.
var secretish = regexp.MustCompile(`(?i)token|password|passwd|secret|key|credential|bearer`)

// runCommand runs `command` (split on spaces, placeholders replaced) with `env` added
// to the agent's own environment. Its output goes to the agent's (the host console);
// an error names the exit status and the last output line that says nothing secret.
func runCommand(ctx context.Context, command string, replace map[string]string, env []string) error {
	fields := strings.Fields(command)
	if len(fields) == 0 {
		return nil
	}
	for i, field := range fields {
		for placeholder, value := range replace {
			field = strings.ReplaceAll(field, placeholder, value)
		}
		fields[i] = field
	}
	cmd := exec.CommandContext(ctx, fields[0], fields[1:]...)
	cmd.Env = append(os.Environ(), env...)
	tail := &tailBuffer{}
	cmd.Stdout = io.MultiWriter(os.Stdout, tail)
	cmd.Stderr = io.MultiWriter(os.Stderr, tail)
	err := cmd.Run()
	if err == nil {
		return nil
	}
	message := fmt.Sprintf("%s: %v", filepath.Base(fields[0]), err)
	lines := strings.Split(strings.TrimSpace(tail.String()), "\n")
	if last := printable(lines[len(lines)-1]); last != "" && !secretish.MatchString(last) {
		message += ": " + last
	}
	return errors.New(message)
}

// tailBuffer keeps the last 4 KiB written to it (an installer may write a lot).
type tailBuffer struct{ bytes.Buffer }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.Buffer.Write(p)
	if over := t.Len() - 4096; over > 0 {
		t.Next(over)
	}
	return len(p), nil
}

// liveBoot: running from a live image (the registration ISO/USB), not an installed
// system, by the kernel command line as kairos-sdk v0.25.3 tells them apart
// (state/state.go getNonUKIBootState: live:LABEL, live:CDLABEL, netboot).
func liveBoot(root string) bool {
	cmdline := readText(root, "proc/cmdline")
	for _, mark := range []string{"live:LABEL", "live:CDLABEL", "netboot"} {
		if strings.Contains(cmdline, mark) {
			return true
		}
	}
	return false
}
