package main

// Hardware facts as the enrollment endpoint takes them (capi_c3os/api/hosts.py
// HostHardware), read from /proc and /sys under --root, so tests can point the agent
// at a fake tree. Nothing here needs root or a tool beyond the kernel's files.

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
)

type CPU struct {
	Arch    string `json:"arch"`
	Model   string `json:"model,omitempty"`
	Cores   int    `json:"cores"`
	Threads int    `json:"threads"`
}

type Disk struct {
	Name       string `json:"name"`
	SizeBytes  int64  `json:"sizeBytes"`
	Model      string `json:"model,omitempty"`
	Serial     string `json:"serial,omitempty"`
	Rotational *bool  `json:"rotational,omitempty"`
	Removable  bool   `json:"removable"`
}

type NIC struct {
	Name string `json:"name"`
	MAC  string `json:"mac"`
}

type System struct {
	UUID         string `json:"uuid"`
	Serial       string `json:"serial,omitempty"`
	Manufacturer string `json:"manufacturer,omitempty"`
	Product      string `json:"product,omitempty"`
}

type TPM struct {
	Present bool   `json:"present"`
	Version string `json:"version,omitempty"`
}

type Hardware struct {
	CPU       CPU    `json:"cpu"`
	MemoryMiB int64  `json:"memoryMiB"`
	Disks     []Disk `json:"disks"`
	NICs      []NIC  `json:"nics"`
	System    System `json:"system"`
	TPM       TPM    `json:"tpm"`
}

var (
	uuidPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	macPattern  = regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$`)
	nicPattern  = regexp.MustCompile(`^[A-Za-z0-9][-A-Za-z0-9_.]{0,14}$`)
	diskPattern = regexp.MustCompile(`^[A-Za-z0-9][-A-Za-z0-9_.:]{0,200}$`)
	// Block devices that are never disks one installs onto or reports: loop, RAM and
	// compressed-RAM devices, device-mapper and software RAID stacked on real disks.
	virtualBlock = regexp.MustCompile(`^(loop|ram|zram|dm-|md|nbd|fd)`)
)

const (
	maxDisks = 64 // the endpoint's MAX_DISKS / MAX_NICS
	maxNICs  = 64
)

// printable keeps what the endpoint accepts as free text: printable ASCII, at most 256.
func printable(s string) string {
	var b strings.Builder
	for _, r := range strings.TrimSpace(s) {
		if r >= ' ' && r <= '~' {
			b.WriteRune(r)
		}
	}
	out := strings.TrimSpace(b.String())
	if len(out) > 256 {
		out = out[:256]
	}
	return out
}

func readText(root string, path string) string {
	data, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		return ""
	}
	return printable(string(data))
}

func exists(root, path string) bool {
	_, err := os.Stat(filepath.Join(root, path))
	return err == nil
}

// goArch names the architecture as the endpoint does (Go's names, like Kubernetes').
func goArch() string {
	if arch := os.Getenv("C3OS_AGENT_ARCH"); arch != "" { // tests of another arch's tree
		return arch
	}
	return runtime.GOARCH
}

func gatherCPU(root string) CPU {
	cpu := CPU{Arch: goArch()}
	file, err := os.Open(filepath.Join(root, "proc/cpuinfo"))
	if err != nil {
		cpu.Cores, cpu.Threads = runtime.NumCPU(), runtime.NumCPU()
		return cpu
	}
	defer file.Close()
	cores := map[string]bool{}
	physical := ""
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		key, value, ok := strings.Cut(scanner.Text(), ":")
		if !ok {
			continue
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		switch key {
		case "processor":
			cpu.Threads++
		case "model name":
			if cpu.Model == "" {
				cpu.Model = printable(value)
			}
		case "physical id":
			physical = value
		case "core id":
			// A core is a (package, core) pair: threads of one core share it.
			cores[physical+"/"+value] = true
		}
	}
	cpu.Cores = len(cores)
	if cpu.Cores == 0 || cpu.Cores > cpu.Threads { // arm64 and VMs often list no core ids
		cpu.Cores = cpu.Threads
	}
	if cpu.Threads == 0 {
		cpu.Cores, cpu.Threads = runtime.NumCPU(), runtime.NumCPU()
	}
	return cpu
}

func gatherMemoryMiB(root string) int64 {
	file, err := os.Open(filepath.Join(root, "proc/meminfo"))
	if err != nil {
		return 0
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kib, _ := strconv.ParseInt(fields[1], 10, 64)
			return kib / 1024
		}
	}
	return 0
}

func gatherDisks(root string) []Disk {
	entries, _ := os.ReadDir(filepath.Join(root, "sys/block"))
	disks := []Disk{}
	for _, entry := range entries {
		name := entry.Name()
		if virtualBlock.MatchString(name) || !diskPattern.MatchString(name) {
			continue
		}
		base := "sys/block/" + name
		sectors, err := strconv.ParseInt(readText(root, base+"/size"), 10, 64)
		if err != nil || sectors <= 0 {
			continue // an empty card reader or CD drive
		}
		disk := Disk{
			Name: "/dev/" + name,
			// /sys/block/*/size counts 512-byte sectors whatever the device's block size.
			SizeBytes: sectors * 512,
			Model:     readText(root, base+"/device/model"),
			Serial:    firstOf(root, base+"/device/serial", base+"/serial", base+"/device/vpd_serial"),
			Removable: readText(root, base+"/removable") == "1" || onUSB(root, base),
		}
		switch readText(root, base+"/queue/rotational") {
		case "0":
			disk.Rotational = boolPtr(false)
		case "1":
			disk.Rotational = boolPtr(true)
		}
		disks = append(disks, disk)
		if len(disks) == maxDisks {
			break
		}
	}
	return disks
}

// onUSB: USB disks and sticks often claim removable=0; the registration stick must
// never be an install target, so anything behind USB counts as removable media.
func onUSB(root, base string) bool {
	resolved, err := filepath.EvalSymlinks(filepath.Join(root, base))
	if err != nil {
		return false
	}
	return strings.Contains(resolved, "/usb")
}

func firstOf(root string, paths ...string) string {
	for _, path := range paths {
		if value := readText(root, path); value != "" {
			return value
		}
	}
	return ""
}

func boolPtr(b bool) *bool { return &b }

func gatherNICs(root string) []NIC {
	entries, _ := os.ReadDir(filepath.Join(root, "sys/class/net"))
	nics := []NIC{}
	for _, entry := range entries {
		name := entry.Name()
		base := "sys/class/net/" + name
		// Physical NICs have a device; bridges, bonds, veths and tunnels do not.
		if !nicPattern.MatchString(name) || !exists(root, base+"/device") {
			continue
		}
		mac := strings.ToLower(readText(root, base+"/address"))
		if !macPattern.MatchString(mac) || mac == "00:00:00:00:00:00" {
			continue
		}
		nics = append(nics, NIC{Name: name, MAC: mac})
		if len(nics) == maxNICs {
			break
		}
	}
	sort.Slice(nics, func(i, j int) bool { return nics[i].Name < nics[j].Name })
	return nics
}

func gatherTPM(root string) TPM {
	entries, _ := os.ReadDir(filepath.Join(root, "sys/class/tpm"))
	for _, entry := range entries {
		if !strings.HasPrefix(entry.Name(), "tpm") || strings.HasPrefix(entry.Name(), "tpmrm") {
			continue
		}
		base := "sys/class/tpm/" + entry.Name()
		tpm := TPM{Present: true}
		switch readText(root, base+"/tpm_version_major") {
		case "2":
			tpm.Version = "2.0"
		case "1":
			tpm.Version = "1.2"
		default:
			// Kernels before 5.6 have no tpm_version_major; only TPM 1.2 has caps.
			if exists(root, base+"/caps") {
				tpm.Version = "1.2"
			} else if exists(root, "sys/class/tpmrm/tpmrm0") {
				tpm.Version = "2.0"
			}
		}
		return tpm
	}
	return TPM{}
}

func gatherHardware(root string) (Hardware, error) {
	dmi := "sys/class/dmi/id/"
	hw := Hardware{
		CPU:       gatherCPU(root),
		MemoryMiB: gatherMemoryMiB(root),
		Disks:     gatherDisks(root),
		NICs:      gatherNICs(root),
		System: System{
			UUID:         strings.ToLower(readText(root, dmi+"product_uuid")),
			Serial:       readText(root, dmi+"product_serial"),
			Manufacturer: readText(root, dmi+"sys_vendor"),
			Product:      readText(root, dmi+"product_name"),
		},
		TPM: gatherTPM(root),
	}
	// The system UUID is the host's identity; without it there is nothing to register
	// (product_uuid is readable by root only on most kernels).
	if !uuidPattern.MatchString(hw.System.UUID) {
		return hw, fmt.Errorf("no system UUID in %s (run as root?)", filepath.Join(root, dmi+"product_uuid"))
	}
	if hw.MemoryMiB < 1 {
		return hw, fmt.Errorf("no MemTotal in %s", filepath.Join(root, "proc/meminfo"))
	}
	return hw, nil
}
