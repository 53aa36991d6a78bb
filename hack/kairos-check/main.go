// kairos-check: strict decode of rendered #cloud-config documents into Kairos's own Go
// types (kairos-sdk, yip), unknown fields forbidden. Kairos itself ignores unknown keys,
// so a typo in what we render would do nothing on a node; this is what catches it.
//
// Usage: kairos-check FILE... ; prints one JSON object
// {"FILE": {"problems": ["...", ...], "validate": "..."}}: "validate" is what
// `kairos-agent validate FILE` reports (it calls the same kairos-sdk schema.Validate),
// empty when it accepts the document; one process for many documents.
// Exit status 0 even with problems (the caller reads the JSON); 2 on usage errors.
// kairos-check --stage-keys prints the keys of a yip stage step (yip schema.Stage).
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"

	sdkschema "github.com/kairos-io/kairos-sdk/schema"
	"github.com/kairos-io/kairos-sdk/types/install"
	yip "github.com/mudler/yip/pkg/schema"
	cloudinit "github.com/mudler/yip/pkg/schema/cloudinit"
	"gopkg.in/yaml.v3"
)

// The blocks provider-kairos owns. provider-kairos/v2 is not served by the Go module
// proxy, so these mirror internal/provider/config/config.go of provider-kairos v2.16.4
// (commit 547c23a) field for field (k0s blocks left out: we never render them).

type K3s struct {
	Env              map[string]string `yaml:"env,omitempty"`
	ReplaceEnv       bool              `yaml:"replace_env,omitempty"`
	ReplaceArgs      bool              `yaml:"replace_args,omitempty"`
	Args             []string          `yaml:"args,omitempty"`
	Enabled          *bool             `yaml:"enabled,omitempty"`
	EmbeddedRegistry bool              `yaml:"embedded_registry,omitempty"`
}

type P2P struct {
	NetworkToken string `yaml:"network_token,omitempty"`
	NetworkID    string `yaml:"network_id,omitempty"`
	Role         string `yaml:"role,omitempty"`
	DNS          bool   `yaml:"dns,omitempty"`
	LogLevel     string `yaml:"loglevel,omitempty"`
	VPN          VPN    `yaml:"vpn,omitempty"`
	MinimumNodes int    `yaml:"minimum_nodes,omitempty"`
	DisableDHT   bool   `yaml:"disable_dht,omitempty"`
	Auto         Auto   `yaml:"auto,omitempty"`
	DynamicRoles bool   `yaml:"dynamic_roles,omitempty"`
}

type VPN struct {
	Create *bool             `yaml:"create,omitempty"`
	Use    *bool             `yaml:"use,omitempty"`
	Env    map[string]string `yaml:"env,omitempty"`
}

type Auto struct {
	Enable *bool `yaml:"enable,omitempty"`
	HA     HA    `yaml:"ha,omitempty"`
}

type HA struct {
	Enable      *bool  `yaml:"enable,omitempty"`
	ExternalDB  string `yaml:"external_db,omitempty"`
	MasterNodes *int   `yaml:"master_nodes,omitempty"`
}

// KubeVIP also embeds kube-vip's kubevip.Config (no `,inline` tag, so under a `config`
// key); we never render that key, so it is left out and refused here.
type KubeVIP struct {
	EIP         string `yaml:"eip,omitempty"`
	ManifestURL string `yaml:"manifest_url,omitempty"`
	Interface   string `yaml:"interface,omitempty"`
	Enable      *bool  `yaml:"enable,omitempty"`
	StaticPod   bool   `yaml:"static_pod,omitempty"`
	Version     string `yaml:"version,omitempty"`
	Image       string `yaml:"image,omitempty"`
}

// Each top-level block and the type Kairos decodes it into.
var blocks = map[string]func() any{
	"hostname":  func() any { return new(string) },                 // yip cloudinit.CloudConfig.Hostname
	"users":     func() any { return new([]cloudinit.User) },       // yip's cloud-init loader
	"install":   func() any { return new(install.Install) },        // kairos-sdk types/install
	"stages":    func() any { return new(map[string][]yip.Stage) }, // yip schema.YipConfig.Stages
	"k3s":       func() any { return new(K3s) },
	"k3s-agent": func() any { return new(K3s) },
	"p2p":       func() any { return new(P2P) },
	"kubevip":   func() any { return new(KubeVIP) },
}

// Kairos runs stages in this order (immucore: rootfs, initramfs; then kairos-agent
// run-stage fs, boot, network, reconcile), each as <stage>.before, <stage>, <stage>.after.
var stageOrder = []string{"rootfs", "initramfs", "fs", "boot", "network", "reconcile"}

var stageName = regexp.MustCompile(`^([a-z-]+?)(\.before|\.after)?$`)

func stageRank(name string) (int, bool) {
	m := stageName.FindStringSubmatch(name)
	if m == nil {
		return 0, false
	}
	for i, s := range stageOrder {
		if s == m[1] {
			return 3*i + map[string]int{".before": 0, "": 1, ".after": 2}[m[2]], true
		}
	}
	return 0, false
}

func strict(node *yaml.Node, into any) error {
	raw, err := yaml.Marshal(node)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	return dec.Decode(into)
}

func check(text string) []string {
	problems := []string{}
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if !strings.HasPrefix(text, "#cloud-config\n") || !cloudinit.IsCloudConfig(text) {
		add("not a #cloud-config document")
	}
	var top map[string]yaml.Node
	if err := yaml.Unmarshal([]byte(text), &top); err != nil {
		return append(problems, "yaml: "+err.Error())
	}
	keys := make([]string, 0, len(top))
	for k := range top {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		newValue, ok := blocks[key]
		if !ok {
			add(".%s: unknown top-level key", key)
			continue
		}
		node := top[key]
		if err := strict(&node, newValue()); err != nil {
			add(".%s: %s", key, err)
		}
	}
	if _, ok := top["k3s"]; ok {
		if _, ok := top["k3s-agent"]; ok {
			add("both k3s and k3s-agent are set")
		}
	}
	// What yip's own cloud-init loader makes of the document (users land in `boot`).
	cfg, err := yip.Load(text, nil, nil, nil)
	if err != nil {
		return append(problems, "yip: "+err.Error())
	}
	created := map[string]int{} // user -> rank of the stage that creates it
	for stage, steps := range cfg.Stages {
		rank, ok := stageRank(stage)
		if !ok {
			add(".stages.%s: not a stage Kairos runs", stage)
			continue
		}
		for _, step := range steps {
			for name := range step.Users {
				created[name] = rank
			}
		}
	}
	// yip plugins/user.go createUser writes `passwd` to /etc/shadow as is: empty means
	// password-less login unless lock_passwd is set.
	anyAdmin := false
	for _, steps := range cfg.Stages {
		for _, step := range steps {
			for name, u := range step.Users {
				if u.PasswordHash == "" && !u.LockPasswd {
					add("user %q: no passwd and no lock_passwd: yip creates it password-less", name)
				}
				anyAdmin = anyAdmin || u.PrimaryGroup == "admin" || slices.Contains(u.Groups, "admin")
			}
		}
	}
	// kairos-agent v2.31.4 pkg/config/config.go CheckConfigForUsers: install, upgrade and
	// reset refuse a configuration without an admin user unless install.nousers is set.
	var inst struct {
		Install install.Install `yaml:"install"`
	}
	_ = yaml.Unmarshal([]byte(text), &inst)
	if !anyAdmin && !inst.Install.NoUsers {
		add("no user in group admin and no install.nousers: kairos-agent install/upgrade/reset refuse it")
	}
	for stage, steps := range cfg.Stages {
		rank, _ := stageRank(stage)
		for i, step := range steps {
			hasUsers := len(step.Users) > 0
			for _, f := range step.Files {
				where := fmt.Sprintf(".stages.%s[%d] %s", stage, i, f.Path)
				if f.Permissions == 0 || f.Permissions > 0o7777 {
					add("%s: permissions %d is not a file mode", where, f.Permissions)
				}
				switch f.Encoding {
				case "":
				case "b64", "base64":
					if _, err := base64.StdEncoding.DecodeString(f.Content); err != nil {
						add("%s: content is not base64: %s", where, err)
					}
				default:
					add("%s: encoding %q not rendered by us", where, f.Encoding)
				}
				owner := strings.SplitN(f.OwnerString, ":", 2)[0]
				if when, ok := created[owner]; f.OwnerString != "" && ok && (when > rank || (when == rank && hasUsers)) {
					add("%s: owner %q is created by stage %s only later (top-level users are created in boot)", where, owner, stageOrder[when/3])
				}
			}
		}
	}
	sort.Strings(problems)
	return problems
}

func stageKeys() []string {
	keys := []string{}
	t := reflect.TypeOf(yip.Stage{})
	for i := 0; i < t.NumField(); i++ {
		name := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
		if name == "" {
			name = strings.ToLower(t.Field(i).Name)
		}
		if name != "-" {
			keys = append(keys, name)
		}
	}
	sort.Strings(keys)
	return keys
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--stage-keys" {
		_ = json.NewEncoder(os.Stdout).Encode(stageKeys())
		return
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kairos-check FILE...")
		os.Exit(2)
	}
	type result struct {
		Problems []string `json:"problems"`
		Validate string   `json:"validate"`
	}
	out := map[string]result{}
	for _, path := range os.Args[1:] {
		text, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		r := result{Problems: check(string(text))}
		if err := sdkschema.Validate(path); err != nil {
			r.Validate = err.Error()
		}
		out[path] = r
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	_ = enc.Encode(out)
}
