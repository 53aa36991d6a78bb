package main

// The enrollment protocol (capi_c3os/operator/enrollment.py), client side: HTTPS with
// the site's CA as the only root, a bearer secret per request, JSON both ways.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"
)

const prefix = "/enrollment/v1"

// errRefused: the endpoint said 401: a bad token or credential, or an unknown host
// (it does not say which).
var errRefused = errors.New("refused (401)")

// errStale: 409, a report about a claim or reset the host no longer holds, or that
// does not follow its phase.
type errStale struct{ message string }

func (e errStale) Error() string { return "conflict (409): " + e.message }

type client struct {
	base string
	http *http.Client
}

func newClient(base string, caFile string) (*client, error) {
	parsed, err := url.Parse(base)
	if err != nil || parsed.Scheme != "https" || parsed.Host == "" {
		return nil, fmt.Errorf("--url must be https://host[:port], got %q", base)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading the CA: %w", err)
	}
	// Only the site's CA: no system roots, so nothing else can pose as the manager.
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		Proxy:               http.ProxyFromEnvironment,
		TLSHandshakeTimeout: 15 * time.Second,
		MaxIdleConns:        2,
		IdleConnTimeout:     90 * time.Second,
	}
	return &client{
		base: parsed.Scheme + "://" + parsed.Host,
		http: &http.Client{Transport: transport, Timeout: 30 * time.Second},
	}, nil
}

// call sends `body` (JSON, or nothing) with `secret` as bearer and decodes a JSON answer
// into `out`. The secret is only ever in the header: never in an error or a log.
func (c *client) call(method, path, secret string, body, out any) error {
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		reader = bytes.NewReader(data)
	}
	request, err := http.NewRequest(method, c.base+path, reader)
	if err != nil {
		return err
	}
	request.Header.Set("Authorization", "Bearer "+secret)
	if body != nil {
		request.Header.Set("Content-Type", "application/json")
	}
	response, err := c.http.Do(request)
	if err != nil {
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			return fmt.Errorf("%s %s: %w", method, path, urlErr.Err) // without the URL's query, none here anyway
		}
		return err
	}
	defer response.Body.Close()
	content, _ := io.ReadAll(io.LimitReader(response.Body, 1<<20))
	switch {
	case response.StatusCode == http.StatusUnauthorized:
		return errRefused
	case response.StatusCode == http.StatusConflict:
		return errStale{message: errorText(content)}
	case response.StatusCode == http.StatusTooManyRequests || response.StatusCode == http.StatusServiceUnavailable:
		wait, _ := strconv.Atoi(response.Header.Get("Retry-After"))
		return retryLater{after: time.Duration(max(wait, 1)) * time.Second, status: response.StatusCode}
	case response.StatusCode >= 300:
		return fmt.Errorf("%s %s: %d %s", method, path, response.StatusCode, errorText(content))
	}
	if out != nil && len(content) > 0 {
		if err := json.Unmarshal(content, out); err != nil {
			return fmt.Errorf("%s %s: answer is not JSON: %w", method, path, err)
		}
	}
	return nil
}

type retryLater struct {
	after  time.Duration
	status int
}

func (r retryLater) Error() string { return fmt.Sprintf("busy (%d), retry in %s", r.status, r.after) }

func errorText(content []byte) string {
	var answer struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(content, &answer) == nil && answer.Error != "" {
		return printable(answer.Error)
	}
	return printable(string(content[:min(len(content), 200)]))
}

type registration struct {
	Namespace   string `json:"namespace"`
	Name        string `json:"name"`
	Credential  string `json:"credential"`
	Accepted    bool   `json:"accepted"`
	PollSeconds int    `json:"pollSeconds"`
}

func (c *client) register(namespace, pool, token string, hw Hardware) (registration, error) {
	var answer registration
	path := fmt.Sprintf("%s/namespaces/%s/pools/%s/hosts", prefix, url.PathEscape(namespace), url.PathEscape(pool))
	err := c.call(http.MethodPost, path, token, map[string]any{"hardware": hw}, &answer)
	if err == nil && (answer.Credential == "" || answer.Name == "") {
		err = errors.New("registration answer without a credential")
	}
	return answer, err
}

type image struct {
	URL      string `json:"url"`
	Checksum string `json:"checksum"`
	Format   string `json:"format"`
}

type install struct {
	Image    image             `json:"image"`
	UserData string            `json:"userData"` // base64
	MetaData map[string]string `json:"metaData"`
	Disk     string            `json:"disk"`
}

type assignment struct {
	Action      string   `json:"action"`
	ID          string   `json:"id"`
	Reason      string   `json:"reason"`
	Install     *install `json:"install"`
	PollSeconds int      `json:"pollSeconds"`
}

func hostPath(namespace, name, what string) string {
	return fmt.Sprintf("%s/namespaces/%s/hosts/%s/%s", prefix, url.PathEscape(namespace), url.PathEscape(name), what)
}

func (c *client) assignment(namespace, name, credential string) (assignment, error) {
	var answer assignment
	err := c.call(http.MethodGet, hostPath(namespace, name, "assignment"), credential, nil, &answer)
	return answer, err
}

func (c *client) report(namespace, name, credential, event, id, message string) error {
	if len(message) > 1024 {
		message = message[:1024]
	}
	body := map[string]string{"event": event, "id": id, "message": message}
	return c.call(http.MethodPost, hostPath(namespace, name, "reports"), credential, body, nil)
}
