// The operators' console. It calls the admin API with the session cookie and the session's
// CSRF token, which the login answers once and this tab keeps in sessionStorage (no other
// origin can read it, while the cookie also goes to other ports of this host). Everything
// it shows is written as text (textContent), never as HTML, and the page's policy (Trusted
// Types with no policy) would refuse any HTML sink anyway.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  let csrf = null;
  let fleetTimer = null;
  let receiptTimer = null;
  let searchAfter = null;

  class SessionEnded extends Error {}

  // One call to this listener: JSON in and out, the CSRF token once logged in. A
  // background refresh says so: it does not keep the session from going idle.
  async function call(method, path, body, background) {
    const headers = { Accept: 'application/json' };
    if (csrf) headers['X-CSRF-Token'] = csrf;
    if (background) headers['X-Console-Background'] = '1';
    const init = { method, headers, credentials: 'same-origin', cache: 'no-store', redirect: 'error' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    // 401: the session ended; 403: this tab's token is no longer the session's (another
    // tab logged in and replaced the cookie). Either way, nothing shown is current.
    if ((response.status === 401 || response.status === 403) && path !== '/console/login') {
      showLogin('Your session has ended, or another tab logged in; log in again.');
      throw new SessionEnded();
    }
    return { status: response.status, data };
  }

  function problem(result) {
    const d = result.data || {};
    if (d.error_description) return `${d.error_description} (${d.error}, HTTP ${result.status})`;
    if (d.error) return `${d.error} (HTTP ${result.status})`;
    return `HTTP ${result.status}`;
  }

  function text(el, value) {
    el.textContent = value === null || value === undefined ? '' : String(value);
  }

  function row(tbody, values) {
    const tr = document.createElement('tr');
    for (const value of values) {
      const td = document.createElement('td');
      if (value instanceof Node) td.appendChild(value);
      else text(td, value);
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
    return tr;
  }

  function ago(ms) {
    if (ms === null || ms === undefined) return '—';
    if (ms < 1000) return `${ms} ms`;
    if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`;
    return `${Math.round(ms / 60000)} min`;
  }

  function when(unixMs) {
    return unixMs ? new Date(unixMs).toLocaleString() : '—';
  }

  function fillIssuers(select, issuers, any) {
    select.replaceChildren();
    if (any) select.appendChild(new Option('Any issuer', ''));
    for (const iss of issuers) select.appendChild(new Option(iss, iss));
  }

  // Views.

  function showLogin(message) {
    csrf = null;
    sessionStorage.removeItem('csrf');
    clearInterval(fleetTimer);
    clearInterval(receiptTimer);
    $('app-view').hidden = true;
    $('logout').hidden = true;
    text($('who'), '');
    $('login-view').hidden = false;
    text($('login-error'), message || '');
    $('login-id').focus();
  }

  function showApp(session) {
    $('login-view').hidden = true;
    $('app-view').hidden = false;
    $('logout').hidden = false;
    text($('who'), `Logged in as ${session.client_id}`);
    fillIssuers($('revoke-iss'), session.issuers, false);
    fillIssuers($('search-iss'), session.issuers, true);
    revokeKindChanged();
    refreshFleet();
    clearInterval(fleetTimer);
    fleetTimer = setInterval(refreshFleet, 2000);
    search(false);
  }

  // Login and logout.

  $('login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    text($('login-error'), '');
    const secret = $('login-secret');
    const result = await call('POST', '/console/login', {
      client_id: $('login-id').value,
      client_secret: secret.value,
    });
    secret.value = '';
    if (result.status === 200) {
      csrf = result.data.csrf_token;
      sessionStorage.setItem('csrf', csrf);
      showApp(result.data);
    } else {
      text($('login-error'), problem(result));
    }
  });

  $('logout').addEventListener('click', async () => {
    try {
      await call('POST', '/console/logout');
    } catch (_) {
      // Ended either way.
    }
    showLogin('Logged out.');
  });

  // The fleet and the outbox, every two seconds.

  async function refreshFleet() {
    try {
      const [fleet, outbox] = await Promise.all([
        call('GET', '/admin/gateways', undefined, true),
        call('GET', '/admin/outbox', undefined, true),
      ]);
      const tbody = $('fleet-table').tBodies[0];
      if (fleet.status !== 200 || outbox.status !== 200) {
        text($('fleet-updated'), `not updated: ${problem(fleet.status !== 200 ? fleet : outbox)}`);
        return;
      }
      tbody.replaceChildren();
      for (const g of fleet.data.gateways) {
        const ready = g.ready ? 'ready' : `not ready: ${(g.reasons || []).join(', ')}`;
        const tr = row(tbody, [
          g.gateway,
          ready,
          ago(g.staleness_ms),
          `${ago(g.seen_ms_ago)} ago`,
          g.last_sequence,
          g.rules,
          g.version,
        ]);
        tr.className = g.ready ? 'ok' : 'bad';
      }
      if (fleet.data.gateways.length === 0) row(tbody, ['No gateway heard from', '', '', '', '', '', '']);
      const o = outbox.data;
      text($('outbox-backlog'), o.backlog);
      $('outbox-backlog').className = o.backlog > 0 ? 'bad' : 'ok';
      text($('outbox-oldest'), o.backlog > 0 ? ago(o.oldest_unpublished_ms) : '—');
      text($('outbox-last'), o.last_published ? `#${o.last_published.sequence} ${o.last_published.id}` : '—');
      text($('outbox-nats'), o.nats_connected ? 'connected' : 'disconnected');
      $('outbox-nats').className = o.nats_connected ? 'ok' : 'bad';
      text($('fleet-updated'), `updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      if (!(error instanceof SessionEnded)) text($('fleet-updated'), 'cannot reach the server');
    }
  }

  // Revoking.

  const VALUE_LABELS = {
    token: 'Token',
    jti: 'jti',
    subject: 'Subject (sub)',
    client_id: 'Client id',
    session: 'Session id (sid)',
  };

  function revokeKindChanged() {
    const kind = $('revoke-kind').value;
    text($('revoke-value-label'), VALUE_LABELS[kind]);
    $('revoke-iss-row').hidden = kind === 'token';
    $('revoke-exp-row').hidden = kind !== 'jti';
    $('revoke-exp').required = kind === 'jti';
    $('revoke-before-row').hidden = !['subject', 'client_id', 'session'].includes(kind);
  }
  $('revoke-kind').addEventListener('change', revokeKindChanged);

  $('revoke-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    text($('revoke-error'), '');
    const kind = $('revoke-kind').value;
    const body = { reason: $('revoke-reason').value };
    const value = $('revoke-value').value.trim();
    if (kind === 'jti') {
      body.jti = value;
      body.exp = Number($('revoke-exp').value);
    } else {
      body[kind] = value;
    }
    if (kind !== 'token') body.iss = $('revoke-iss').value;
    const before = $('revoke-before').value;
    if (!$('revoke-before-row').hidden && before) {
      body.before = Math.floor(new Date(before).getTime() / 1000);
    }
    $('revoke-submit').disabled = true;
    try {
      const result = await call('POST', '/admin/revocations', body);
      if (result.status === 200) {
        $('revoke-value').value = '';
        $('revoke-reason').value = '';
        watchReceipt(result.data.id);
        search(false);
      } else {
        text($('revoke-error'), problem(result));
      }
    } catch (error) {
      if (!(error instanceof SessionEnded)) text($('revoke-error'), 'cannot reach the server');
    } finally {
      $('revoke-submit').disabled = false;
    }
  });

  // A revocation event's rule (flattened into it): its kind and the key it names.
  function describe(revocation) {
    const key = revocation.jti || revocation.sub || revocation.client_id || revocation.sid || '';
    return { kind: revocation.kind, key };
  }

  // Shows revocation `id`'s receipt, refreshed four times a second until every gateway has
  // applied it (or two minutes have passed).
  function watchReceipt(id) {
    clearInterval(receiptTimer);
    $('receipt-panel').hidden = false;
    text($('receipt-id'), id);
    text($('receipt-count'), '…');
    text($('receipt-state'), '');
    $('receipt-table').tBodies[0].replaceChildren();
    const started = Date.now();
    const poll = async () => {
      let result;
      try {
        result = await call('GET', `/admin/revocations/${encodeURIComponent(id)}`, undefined, true);
      } catch (error) {
        if (error instanceof SessionEnded) clearInterval(receiptTimer);
        return;
      }
      if (result.status !== 200) {
        text($('receipt-state'), problem(result));
        return;
      }
      const r = result.data;
      const { kind, key } = describe(r.revocation);
      text($('receipt-rule'), `${kind} ${key} — ${r.revocation.iss} — ${r.revocation.reason || 'no reason'}`);
      const applied = r.gateways.filter((g) => g.applied).length;
      const total = r.gateways.length + r.missing.length;
      text($('receipt-count'), `${applied}/${total} gateways`);
      const badge = $('receipt-state');
      if (r.enforced) {
        text(badge, 'enforced everywhere');
        badge.className = 'badge ok';
      } else if (!r.published) {
        text(badge, 'committed, not yet published');
        badge.className = 'badge wait';
      } else {
        text(badge, 'waiting for gateways');
        badge.className = 'badge wait';
      }
      const tbody = $('receipt-table').tBodies[0];
      tbody.replaceChildren();
      for (const g of r.gateways) {
        const tr = row(tbody, [
          g.gateway,
          g.applied ? 'yes' : 'not yet',
          g.applied_at_ms ? new Date(g.applied_at_ms).toLocaleTimeString() : '—',
          g.last_sequence,
          g.talking ? 'yes' : 'silent',
        ]);
        tr.className = g.applied ? 'ok' : 'bad';
      }
      for (const missing of r.missing) {
        row(tbody, [missing, 'never heard from', '—', '—', 'no']).className = 'bad';
      }
      const notes = [];
      if (r.pending.length) notes.push(`Pending: ${r.pending.join(', ')}.`);
      if (r.unreachable.length) notes.push(`Silent: ${r.unreachable.join(', ')}.`);
      if (r.guaranteed_from_ms) {
        notes.push(`Every gateway that still vouches for tokens refuses it by ${when(r.guaranteed_from_ms)} at the latest (its staleness bound).`);
      }
      text($('receipt-notes'), notes.join(' '));
      if (r.enforced || Date.now() - started > 120000) {
        clearInterval(receiptTimer);
        refreshFleet();
      }
    };
    poll();
    receiptTimer = setInterval(poll, 250);
  }

  // Searching the rules in force.

  async function search(more) {
    text($('search-error'), '');
    const params = new URLSearchParams({ limit: '50' });
    const kind = $('search-kind').value;
    const value = $('search-value').value.trim();
    if (kind && value) params.set(kind, value);
    if ($('search-iss').value) params.set('iss', $('search-iss').value);
    if (more && searchAfter !== null) params.set('after', String(searchAfter));
    let result;
    try {
      result = await call('GET', `/admin/revocations?${params}`);
    } catch (_) {
      return;
    }
    const tbody = $('search-table').tBodies[0];
    if (!more) tbody.replaceChildren();
    if (result.status !== 200) {
      text($('search-error'), problem(result));
      return;
    }
    for (const r of result.data.revocations) {
      const { kind: k, key } = describe(r);
      const open = document.createElement('button');
      open.type = 'button';
      open.className = 'link';
      text(open, 'show');
      open.addEventListener('click', () => watchReceipt(r.id));
      const revoked = new Date(r.revoked_at * 1000).toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
      row(tbody, [k, key, r.iss, revoked, r.reason || '', r.requested_by, open]);
    }
    searchAfter = result.data.next_after;
    $('search-more').hidden = searchAfter === null || searchAfter === undefined;
  }

  $('search-form').addEventListener('submit', (event) => {
    event.preventDefault();
    search(false);
  });
  $('search-more').addEventListener('click', () => search(true));

  // Start: this tab's session if it has one, else the login form.
  (async () => {
    csrf = sessionStorage.getItem('csrf');
    if (!csrf) {
      showLogin('');
      return;
    }
    try {
      const result = await call('GET', '/console/session');
      if (result.status === 200) showApp(result.data);
      else showLogin('');
    } catch (_) {
      // showLogin has run.
    }
  })();
})();
