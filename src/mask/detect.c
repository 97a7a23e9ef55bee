/* Content detection: finds card numbers, SSNs, emails, IBANs and secrets in text and redacts them. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "mask/mask.h"

static bool is_alnum(uint8_t c) { return isalnum(c) != 0; }
static bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static bool is_upper(uint8_t c) { return c >= 'A' && c <= 'Z'; }
static bool is_b64url(uint8_t c) { return is_alnum(c) || c == '-' || c == '_'; }

bool mask_luhn_ok(const char *digits, size_t n)
{
	int sum = 0;
	for (size_t i = 0; i < n; i++) {
		int d = digits[n - 1 - i] - '0';
		if (i % 2 == 1) {
			d *= 2;
			if (d > 9)
				d -= 9;
		}
		sum += d;
	}
	return n > 0 && sum % 10 == 0;
}

/* ISO 13616: move the first four characters to the end, letters to 10..35, mod 97 must be 1. */
bool mask_iban_ok(const char *s, size_t n)
{
	if (n < 15 || n > 34)
		return false;
	unsigned rem = 0;
	for (size_t k = 0; k < n; k++) {
		uint8_t c = (uint8_t)s[(k + 4) % n];
		if (is_digit(c))
			rem = (rem * 10 + (unsigned)(c - '0')) % 97;
		else if (is_upper(c))
			rem = (rem * 100 + (unsigned)(c - 'A' + 10)) % 97;
		else
			return false;
	}
	return rem == 1;
}

/*
 * A card number: 13-19 digits, optionally grouped by single spaces or dashes, Luhn-valid.
 * Groups run on into what follows ("4111 1111 1111 1111 123"): the longest run of whole
 * groups that is a valid number wins.
 */
static size_t match_card(const uint8_t *s, size_t n, size_t i)
{
	if (!is_digit(s[i]) || (i > 0 && is_alnum(s[i - 1])))
		return 0;
	char digits[40];
	size_t ends[40], counts[40]; /* where each group ends in s, and digits up to there */
	size_t nd = 0, ng = 0, j = i;
	while (j < n && nd < sizeof digits) {
		if (is_digit(s[j])) {
			digits[nd++] = (char)s[j++];
			if (j >= n || !is_digit(s[j])) {
				ends[ng] = j;
				counts[ng++] = nd;
			}
		} else if ((s[j] == ' ' || s[j] == '-') && j + 1 < n && is_digit(s[j + 1])) {
			j++;
		} else {
			break;
		}
	}
	for (size_t g = ng; g-- > 0;) {
		size_t e = ends[g], c = counts[g];
		if (c < 13 || c > 19 || (e < n && is_alnum(s[e])))
			continue;
		if (mask_luhn_ok(digits, c))
			return e - i;
	}
	return 0;
}

/* NNN-NN-NNNN with the SSA's never-issued areas, groups and serials excluded. */
static size_t match_ssn(const uint8_t *s, size_t n, size_t i)
{
	if (i + 11 > n || (i > 0 && (is_alnum(s[i - 1]) || s[i - 1] == '-')))
		return 0;
	const uint8_t *p = s + i;
	for (int k = 0; k < 11; k++) {
		bool dash = k == 3 || k == 6;
		if (dash ? p[k] != '-' : !is_digit(p[k]))
			return 0;
	}
	if (i + 11 < n && (is_alnum(s[i + 11]) || s[i + 11] == '-'))
		return 0;
	int area = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
	int group = (p[4] - '0') * 10 + (p[5] - '0');
	int serial = (p[7] - '0') * 1000 + (p[8] - '0') * 100 + (p[9] - '0') * 10 + (p[10] - '0');
	if (area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0)
		return 0;
	return 11;
}

static bool email_local(uint8_t c) { return is_alnum(c) || strchr("._%+-", c) != NULL; }

/* local@domain.tld, found from its first character. */
static size_t match_email(const uint8_t *s, size_t n, size_t i)
{
	if (!email_local(s[i]) || (i > 0 && email_local(s[i - 1])))
		return 0;
	size_t j = i;
	while (j < n && email_local(s[j]))
		j++;
	if (j == i || j >= n || s[j] != '@')
		return 0;
	size_t d = ++j, last_dot = 0;
	while (j < n && (is_alnum(s[j]) || s[j] == '-' || s[j] == '.'))
		j++;
	while (j > d && s[j - 1] == '.')
		j--; /* a sentence's full stop is not part of the domain */
	for (size_t k = d; k < j; k++)
		if (s[k] == '.')
			last_dot = k;
	if (!last_dot || last_dot == d || j - last_dot - 1 < 2)
		return 0;
	for (size_t k = last_dot + 1; k < j; k++)
		if (!isalpha(s[k]))
			return 0;
	return j - i;
}

/* CCkk + 11..30 letters/digits, optionally in groups of four separated by single spaces. */
static size_t match_iban(const uint8_t *s, size_t n, size_t i)
{
	if (i + 15 > n || (i > 0 && is_alnum(s[i - 1])) || !is_upper(s[i]) || !is_upper(s[i + 1]) ||
	    !is_digit(s[i + 2]) || !is_digit(s[i + 3]))
		return 0;
	char compact[35];
	size_t nc = 0, j = i, end = i;
	while (j < n && nc < 34) {
		if (is_digit(s[j]) || is_upper(s[j])) {
			compact[nc++] = (char)s[j++];
			end = j;
		} else if (s[j] == ' ' && j + 1 < n && (is_digit(s[j + 1]) || is_upper(s[j + 1])) && nc % 4 == 0) {
			j++;
		} else {
			break;
		}
	}
	if (end < n && is_alnum(s[end]))
		return 0;
	/* Grouped text may run into the next word: try the longest valid prefix. */
	for (size_t len = nc; len >= 15; len--) {
		if (mask_iban_ok(compact, len)) {
			size_t k = i, taken = 0;
			while (taken < len) {
				if (s[k] != ' ')
					taken++;
				k++;
			}
			if (k < n && is_alnum(s[k]))
				continue;
			return k - i;
		}
	}
	return 0;
}

static size_t match_aws_key(const uint8_t *s, size_t n, size_t i)
{
	if (i + 20 > n || (i > 0 && is_alnum(s[i - 1])))
		return 0;
	if (memcmp(s + i, "AKIA", 4) != 0 && memcmp(s + i, "ASIA", 4) != 0 && memcmp(s + i, "ABIA", 4) != 0 &&
	    memcmp(s + i, "ACCA", 4) != 0)
		return 0;
	for (size_t k = 4; k < 20; k++)
		if (!is_upper(s[i + k]) && !is_digit(s[i + k]))
			return 0;
	if (i + 20 < n && is_alnum(s[i + 20]))
		return 0;
	return 20;
}

/* header.payload.signature, both first parts base64url of a JSON object ("eyJ"). */
static size_t match_jwt(const uint8_t *s, size_t n, size_t i)
{
	if (i + 10 > n || memcmp(s + i, "eyJ", 3) != 0 || (i > 0 && is_b64url(s[i - 1])))
		return 0;
	size_t j = i;
	for (int part = 0; part < 3; part++) {
		size_t start = j;
		while (j < n && is_b64url(s[j]))
			j++;
		if (part < 2) {
			if (j - start < 4 || j >= n || s[j] != '.')
				return 0;
			if (part == 1 && (j - start < 3 || memcmp(s + start, "eyJ", 3) != 0))
				return 0;
			j++;
		}
	}
	return j - i;
}

/* A PEM private key block, to its END line (or to the end of the text). */
static size_t match_private_key(const uint8_t *s, size_t n, size_t i)
{
	static const char begin[] = "-----BEGIN ";
	if (i + sizeof begin - 1 > n || memcmp(s + i, begin, sizeof begin - 1) != 0)
		return 0;
	size_t j = i + sizeof begin - 1, line_end = j;
	while (line_end < n && s[line_end] != '\n' && line_end - j < 64)
		line_end++;
	static const char pk[] = "PRIVATE KEY-----";
	bool is_private = false;
	for (size_t k = j; k + sizeof pk - 1 <= line_end; k++)
		if (memcmp(s + k, pk, sizeof pk - 1) == 0)
			is_private = true;
	if (!is_private)
		return 0;
	static const char end[] = "-----END ";
	for (size_t k = line_end; k + sizeof end - 1 <= n; k++) {
		if (memcmp(s + k, end, sizeof end - 1) == 0) {
			size_t e = k + sizeof end - 1;
			while (e < n && s[e] != '\n' && !(e >= 5 && memcmp(s + e - 5, "-----", 5) == 0 && e > k + 9))
				e++;
			return e - i;
		}
	}
	return n - i;
}

static size_t match_any(unsigned det, const uint8_t *s, size_t n, size_t i)
{
	size_t m;
	if ((det & DETECT_PRIVATE_KEY) && s[i] == '-' && (m = match_private_key(s, n, i)))
		return m;
	if ((det & DETECT_JWT) && s[i] == 'e' && (m = match_jwt(s, n, i)))
		return m;
	if ((det & DETECT_AWS_ACCESS_KEY) && s[i] == 'A' && (m = match_aws_key(s, n, i)))
		return m;
	if ((det & DETECT_IBAN) && is_upper(s[i]) && (m = match_iban(s, n, i)))
		return m;
	if ((det & DETECT_US_SSN) && is_digit(s[i]) && (m = match_ssn(s, n, i)))
		return m;
	if ((det & DETECT_CREDIT_CARD) && is_digit(s[i]) && (m = match_card(s, n, i)))
		return m;
	if ((det & DETECT_EMAIL) && (m = match_email(s, n, i)))
		return m;
	return 0;
}

uint8_t *mask_detect_scrub(unsigned detectors, const uint8_t *s, size_t n, size_t *outlen)
{
	uint8_t *out = NULL;
	size_t len = 0, cap = 0, copied = 0;
	for (size_t i = 0; i < n;) {
		size_t m = match_any(detectors, s, n, i);
		if (!m) {
			i++;
			continue;
		}
		size_t need = len + (i - copied) + sizeof MASK_REDACTED + (n - i);
		if (need > cap) {
			cap = need * 2;
			uint8_t *b = realloc(out, cap);
			if (!b)
				abort();
			out = b;
		}
		memcpy(out + len, s + copied, i - copied);
		len += i - copied;
		memcpy(out + len, MASK_REDACTED, sizeof MASK_REDACTED - 1);
		len += sizeof MASK_REDACTED - 1;
		i += m;
		copied = i;
	}
	if (!out)
		return NULL;
	memcpy(out + len, s + copied, n - copied);
	len += n - copied;
	*outlen = len;
	return out;
}

unsigned mask_detector_from_name(const char *name)
{
	static const struct {
		const char *name;
		unsigned bit;
	} names[] = {
		{"credit_card", DETECT_CREDIT_CARD}, {"us_ssn", DETECT_US_SSN}, {"email", DETECT_EMAIL},
		{"iban", DETECT_IBAN}, {"aws_access_key", DETECT_AWS_ACCESS_KEY}, {"jwt", DETECT_JWT},
		{"private_key", DETECT_PRIVATE_KEY},
	};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strcmp(name, names[i].name) == 0)
			return names[i].bit;
	return 0;
}
