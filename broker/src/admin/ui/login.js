// Sends the token once; the API answers with an HttpOnly cookie and the page reloads
// as the dashboard.
document.getElementById('login').addEventListener('submit', async (e) => {
  e.preventDefault();
  const token = document.getElementById('token').value;
  const error = document.getElementById('error');
  error.textContent = '';
  try {
    const r = await fetch('/ui/login', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token }),
    });
    if (r.ok) {
      location.reload();
    } else {
      const body = await r.json().catch(() => ({}));
      error.textContent = body.error || `sign-in failed (${r.status})`;
    }
  } catch (err) {
    error.textContent = `the broker did not answer: ${err.message}`;
  }
});
