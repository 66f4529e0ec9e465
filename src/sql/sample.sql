-- Sample data for the demo and the tests.
INSERT INTO users (email) VALUES
    ('ani@example.com'), ('budi@example.com'), ('citra@example.com'),
    ('dewi@example.com'), ('eko@example.com');

INSERT INTO transactions (user_id, product_id, status, amount, paid_at) VALUES
    (1, 'TALENT-BASIC',   'PAID',     150000, '2023-02-10 10:00+07'),
    (1, 'TALENT-PRO',     'PAID',     450000, '2024-06-01 09:30+07'),
    (2, 'TALENT-BASIC',   'PAID',     150000, '2025-11-20 14:00+07'),
    (3, 'TALENT-BUNDLE',  'PAID',     700000, '2024-01-15 08:00+07'),
    (4, 'TALENT-PRO',     'PENDING',  450000, NULL),
    (5, 'TALENT-BASIC',   'PAID',     150000, '2022-12-31 23:00+07'),
    (5, 'LEGACY-WEBINAR', 'PAID',      50000, '2025-03-03 12:00+07');

INSERT INTO user_assessments (user_id, product_id, answers, completed_at) VALUES
    (1, 'TALENT-BASIC', '{"q1": "a", "q2": "c"}', '2023-02-12 10:00+07'),
    (3, 'TALENT-BUNDLE', '{"q1": "b"}', '2024-01-20 10:00+07');

INSERT INTO commission_rules (logic_json) VALUES
    ('{"bundle": "TALENT-BUNDLE", "discount_pct": 20, "items": ["TALENT-BASIC", "TALENT-PRO"]}');
