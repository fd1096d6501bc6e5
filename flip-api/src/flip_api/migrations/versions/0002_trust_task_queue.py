"""The hub-to-trust task queue (leases, encrypted payloads, explicit dependencies).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 11:53:48.097962
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('trust_tasks',
    sa.Column('trust_id', sa.Uuid(), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('status', sa.Enum('PENDING', 'LEASED', 'COMPLETED', 'FAILED', 'CANCELLED', name='task_status'), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('lease_token', sa.String(length=64), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('leased_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('depends_on', sa.Uuid(), nullable=True),
    sa.Column('result', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('error', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('result_token', sa.String(length=64), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('subject_type', sa.String(length=32), nullable=True),
    sa.Column('subject_id', sa.String(length=64), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['depends_on'], ['trust_tasks.id'], name=op.f('fk_trust_tasks_depends_on_trust_tasks'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['trust_id'], ['trusts.id'], name=op.f('fk_trust_tasks_trust_id_trusts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trust_tasks'))
    )
    op.create_index('ix_trust_tasks_queue', 'trust_tasks', ['trust_id', 'status', 'created_at'], unique=False)
    op.create_index('ix_trust_tasks_subject', 'trust_tasks', ['subject_type', 'subject_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_trust_tasks_subject', table_name='trust_tasks')
    op.drop_index('ix_trust_tasks_queue', table_name='trust_tasks')
    op.drop_table('trust_tasks')
    op.execute("DROP TYPE IF EXISTS task_status")
