-- The channel a machine enrolling with a token follows from its enrollment (a disk made by
-- `image disk` for a channel), signed as its assignment at once; NULL: none until `fleet assign`.
ALTER TABLE tokens ADD COLUMN channel TEXT;
